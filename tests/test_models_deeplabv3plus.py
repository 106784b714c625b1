"""DeepLabV3+: the output stride sets the ASPP resolution; the dilated encoder keeps its ImageNet weights."""

import pytest
import torch
from test_models import tiny

from medseg_core.models.encoders import create_encoder


def _aspp_and_low_level_sizes(model, size=64):
    seen = {}
    hooks = [model.aspp.register_forward_hook(lambda m, i, o: seen.__setitem__("aspp", i[0].shape[-2:])),
             model.low_level.register_forward_hook(lambda m, i, o: seen.__setitem__("low", i[0].shape[-2:]))]
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    assert out.shape[-2:] == (size, size)
    return tuple(seen["aspp"]), tuple(seen["low"])


def test_deeplab_output_stride_sets_the_aspp_resolution():
    sizes = {}
    for stride in (8, 16):
        model = tiny("deeplabv3plus", output_stride=stride)
        sizes[stride] = _aspp_and_low_level_sizes(model)
        assert model.aspp.branches[1][0].dilation == ((12, 12) if stride == 8 else (6, 6))
    # ASPP sees 1/8 or 1/16 of the 64-px input; the low-level skip stays at stride 4 either way.
    assert sizes[8] == ((8, 8), (16, 16)) and sizes[16] == ((4, 4), (16, 16))


def test_deeplab_paper_encoder_resnet50_at_stride_8():
    model = tiny("deeplabv3plus", encoder="resnet50", output_stride=8)
    assert model.encoder.feature_info.channels()[-1] == 2048
    assert _aspp_and_low_level_sizes(model) == ((8, 8), (16, 16))


def test_deeplab_rejects_other_strides():
    with pytest.raises(ValueError, match="output_stride"):
        tiny("deeplabv3plus", output_stride=32)


def test_dilated_encoder_keeps_the_offline_imagenet_weights():
    reference = create_encoder("tf_efficientnet_lite0", pretrained=True).state_dict()
    dilated = create_encoder("tf_efficientnet_lite0", pretrained=True, output_stride=8).state_dict()
    assert reference.keys() == dilated.keys()
    assert all(torch.equal(reference[k], dilated[k]) for k in reference)
