"""Checks specific to model zoo (a): deep supervision, DDANet's reconstruction loss, DeepLabV3+ output stride,
attention gates, the shared blocks, the ASPP-Net recipe and the predict_folder CLI."""

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT
from test_models import TINY, tiny

from medseg_core import create_model
from medseg_core.data import read_image, read_mask
from medseg_core.models.deeplabv3plus import _dilated_encoder
from medseg_core.models.encoders import create_encoder
from medseg_core.models.layers import ASPP, AttentionGate, ResidualBlock, SEBlock
from medseg_core.models.unet3plus import gate_logits
from medseg_core.predict_folder import main as predict_folder_main
from medseg_core.predict_folder import mask_to_image, write_png

# Deep supervision ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "n_outputs"), [("unetplusplus", 4), ("unet3plus", 5)])
def test_deep_supervision_only_in_training(name, n_outputs):
    model = tiny(name)
    x = torch.randn(2, 3, 64, 96)
    model.train()
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == n_outputs
    assert outs[0].shape == (2, 1, 64, 96)
    assert all(o.shape[:2] == (2, 1) and torch.isfinite(o).all() for o in outs)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 96)


@pytest.mark.parametrize("name", ["unetplusplus", "unet3plus"])
def test_deep_supervision_can_be_switched_off(name):
    model = tiny(name, deep_supervision=False).train()
    assert isinstance(model(torch.randn(2, 3, 64, 64)), torch.Tensor)


def test_unet3plus_supervises_every_scale():
    outs = tiny("unet3plus").train()(torch.randn(1, 3, 64, 64))
    # Main output at input size, then decoder levels at strides 4, 8, 16 and the bottom stage at 32.
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (16, 16), (8, 8), (4, 4), (2, 2)]


# UNet 3+ classification-guided module -------------------------------------------------------------------------

def test_gate_logits_binary_scales_foreground_probability():
    logits = torch.randn(2, 1, 5, 5)
    presence = torch.tensor([0.3, -1.2]).view(2, 1, 1, 1)
    gated = gate_logits(logits, presence)
    assert torch.allclose(gated.sigmoid(), logits.sigmoid() * presence.sigmoid(), atol=1e-6)
    absent = gate_logits(logits, torch.full((2, 1, 1, 1), -30.0))
    assert absent.sigmoid().max() < 1e-6


def test_gate_logits_multiclass_keeps_a_distribution():
    logits = torch.randn(2, 3, 4, 4)
    presence = torch.tensor([2.0, -0.5]).view(2, 1, 1, 1)
    probs = gate_logits(logits, presence).softmax(1)
    expected_fg = logits.softmax(1)[:, 1:] * presence.sigmoid()
    assert torch.allclose(probs[:, 1:], expected_fg, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 4), atol=1e-6)


def test_unet3plus_cgm_gates_every_output():
    model = tiny("unet3plus", cgm=True, num_classes=3)
    with torch.no_grad():
        # A strongly negative presence bias: the classifier calls every image empty, so no foreground survives.
        model.classifier[1].bias.fill_(-40.0)
        model.classifier[1].weight.zero_()
    outs = model.train()(torch.randn(2, 3, 64, 64))
    assert len(outs) == 5
    for out in outs:
        assert out.softmax(1)[:, 0].min() > 0.999
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).argmax(1).max() == 0


# DDANet ------------------------------------------------------------------------------------------------------

def test_ddanet_auxiliary_loss_after_training_forward():
    model = tiny("ddanet").train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    aux = model.auxiliary_loss()
    assert isinstance(aux, torch.Tensor) and aux.ndim == 0 and torch.isfinite(aux) and aux > 0
    assert aux.requires_grad
    # It is the MSE between the second decoder's reconstruction and the grey input.
    expected = torch.nn.functional.mse_loss(model.reconstruct(x), model.grey_target(x))
    assert torch.allclose(aux, expected, rtol=1e-5)
    (logits.mean() + aux).backward()
    assert model.grey_head[0].weight.grad is not None and model.grey_head[0].weight.grad.abs().sum() > 0


def test_ddanet_no_auxiliary_loss_in_eval():
    model = tiny("ddanet").train()
    model(torch.randn(1, 3, 64, 64))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert model.auxiliary_loss() is None


def test_ddanet_reconstruction_weight_and_grey_target():
    model = tiny("ddanet", reconstruction_weight=0.0).train()
    model(torch.randn(1, 3, 64, 64))
    assert model.auxiliary_loss().item() == 0.0
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 0] = 1.0  # pure red: BT.601 luma 0.299
    grey = model.grey_target((rgb - mean) / std)
    assert grey.shape == (1, 1, 2, 2) and torch.allclose(grey, torch.full_like(grey, 0.299), atol=1e-6)
    with pytest.raises(ValueError):
        create_model("ddanet", **{**TINY["ddanet"], "reconstruction_weight": -1})


# DeepLabV3+ --------------------------------------------------------------------------------------------------

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
    dilated = _dilated_encoder("tf_efficientnet_lite0", True, 3, 8).state_dict()
    assert reference.keys() == dilated.keys()
    assert all(torch.equal(reference[k], dilated[k]) for k in reference)


# Attention U-Net ---------------------------------------------------------------------------------------------

def test_attention_coefficients_lie_in_unit_interval():
    model = tiny("attention_unet").eval()
    with torch.no_grad():
        maps = model.attention_maps(torch.randn(2, 3, 64, 96))
    # One gate per skip (strides 16, 8, 4, 2), each at its skip's resolution.
    assert [tuple(a.shape) for a in maps] == [(2, 1, 4, 6), (2, 1, 8, 12), (2, 1, 16, 24), (2, 1, 32, 48)]
    for a in maps:
        assert a.min() >= 0 and a.max() <= 1
        assert a.std() > 0  # the gate varies over the image rather than passing everything


def test_attention_gate_scales_the_skip_by_its_coefficients():
    gate = AttentionGate(skip_ch=6, gate_ch=10, inter_ch=4).eval()
    x, g = torch.randn(2, 6, 16, 12), torch.randn(2, 10, 8, 6)
    with torch.no_grad():
        out, alpha = gate(x, g)
    assert alpha.shape == (2, 1, 16, 12) and out.shape == x.shape
    assert torch.allclose(out, x * alpha)


# Shared blocks -----------------------------------------------------------------------------------------------

def test_aspp_trains_on_a_batch_of_one():
    aspp = ASPP(8, 12, rates=(1, 2)).train()
    out = aspp(torch.randn(1, 8, 5, 7))
    assert out.shape == (1, 12, 5, 7)
    out.mean().backward()


def test_se_block_reweights_channels_in_unit_range():
    se = SEBlock(8, reduction=4)
    x = torch.rand(2, 8, 5, 5) + 0.1
    ratio = se(x) / x
    assert ratio.shape == x.shape
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)  # one weight per channel
    assert (ratio > 0).all() and (ratio < 1).all()


def test_residual_block_shapes_and_shortcut():
    block = ResidualBlock(4, 8, stride=2, se_reduction=4)
    assert block(torch.randn(2, 4, 9, 10)).shape == (2, 8, 5, 5)
    identity = ResidualBlock(8, 8)
    assert isinstance(identity.shortcut, torch.nn.Identity)


# ASPP-Net recipe and the predict_folder CLI ------------------------------------------------------------------

def test_aspp_net_recipe_builds_a_two_class_model():
    spec = importlib.util.spec_from_file_location("medseg_train_script", ROOT / "train" / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    cfg = train_script.load_config(ROOT / "train" / "configs" / "aspp_net_polyp.yaml", [])
    model = train_script.build_model(cfg)
    assert model.arch == "aspp_net" and model.num_classes == 2 and cfg["train"]["loss"] == "ce"
    assert model.input_size == 256


def test_predict_folder_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict_folder_main(["--help"])
    assert exit_info.value.code == 0
    assert "--images" in capsys.readouterr().out


def test_predict_folder_writes_masks_and_overlays(tmp_path):
    weights = tmp_path / "weights"
    tiny("aspp_net").save_pretrained(weights)
    images = tmp_path / "images"
    images.mkdir()
    for src in EXAMPLES[:2]:
        shutil.copy(src, images / src.name)
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert predict_folder_main(["--model", str(weights), "--images", str(images), "--out", str(out),
                                "--no-progress"]) == 0
    for src in EXAMPLES[:2]:
        mask = read_mask(out / f"{src.stem}_mask.png")
        overlay = out / f"{src.stem}_overlay.png"
        assert overlay.is_file()
        image = read_image(src)
        assert mask.shape == image.shape[:2] and read_image(overlay).shape == image.shape
    assert not (out / "broken_mask.png").exists()


def test_predict_folder_fails_when_nothing_was_segmented(tmp_path):
    weights = tmp_path / "weights"
    tiny("aspp_net").save_pretrained(weights)
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not an image")
    assert predict_folder_main(["--model", str(weights), "--images", str(images), "--out", str(tmp_path / "o"),
                                "--no-progress"]) == 1


def test_mask_to_image_round_trips_through_read_mask(tmp_path):
    mask = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    write_png(tmp_path / "m3.png", mask_to_image(mask, 3))
    assert np.array_equal(read_mask(tmp_path / "m3.png", "neopolyp"), mask)
    write_png(tmp_path / "m2.png", mask_to_image(mask > 0, 2))
    assert np.array_equal(read_mask(tmp_path / "m2.png"), (mask > 0).astype(np.uint8))
