"""Offline ImageNet weights for the EfficientNet-Lite encoders load strictly into timm; decoders pick the encoder's
stages by stride, so the papers' encoders and the offline Lite ones both fit."""

import pytest
import timm
import torch
from test_models import TINY

from medseg_core import create_model
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


@pytest.mark.parametrize(
    ("name", "encoder", "stages", "paper_params"),
    [
        ("pranet", "res2net50_26w_4s", [2, 3, 4], None),
        ("ssformer", "pvt_v2_b2", [0, 1, 2, 3], None),
        ("emcad", "pvt_v2_b0", [3, 2, 1, 0], 3.92e6),
        ("emcad", "pvt_v2_b2", [3, 2, 1, 0], 26.76e6),
    ],
)
def test_paper_encoders_build_and_run(name, encoder, stages, paper_params):
    """Each paper's encoder once (random weights: the Hub is out of reach). EMCAD reports 3.92M (B0) and 26.76M
    (B2) parameters: a decoder that differed from the paper's would not match them."""
    model = create_model(name, encoder=encoder, encoder_weights="random").eval()
    assert model.stages == stages
    if paper_params is not None:
        assert abs(sum(p.numel() for p in model.parameters()) - paper_params) < 0.01e6
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", ["ssformer", "emcad", "pranet"])
def test_lite_encoder_with_offline_imagenet_weights(name):
    """EfficientNet-Lite has five stages (strides 2..32) where PVTv2 has four (4..32): the decoder picks by stride."""
    model = create_model(name, **{**TINY[name], "encoder": "tf_efficientnet_lite0", "encoder_weights": "imagenet"})
    assert model.encoder.feature_info.reduction() == [2, 4, 8, 16, 32]
    expected = {"ssformer": [1, 2, 3, 4], "emcad": [4, 3, 2, 1], "pranet": [2, 3, 4]}[name]
    assert model.stages == expected
    assert tuple(model.mean) == (0.5, 0.5, 0.5)  # the Lite weights' normalisation, not ImageNet's
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 1, 64, 96) and torch.isfinite(out).all()
