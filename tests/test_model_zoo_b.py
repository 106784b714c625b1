"""What is specific to FCT, SSFormer, PraNet and EMCAD: side outputs, paper-default encoders, the structure loss,
the shared blocks they brought (reverse attention, convolutional attention, EMCAD's gates)."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from test_models import TINY, tiny

from medseg_core import create_model, load_model
from medseg_core.losses import DeepSupervisionLoss, StructureLoss, build_loss
from medseg_core.models.layers import (
    EUCB,
    LGAG,
    ConvAttention,
    WideFocus,
    channel_shuffle,
    pick_stages,
    reverse_attention_weights,
)

sys.path.insert(0, str(ROOT / "train"))
import train as train_cli  # noqa: E402

PRANET_CONFIG = ROOT / "train" / "configs" / "pranet_polyp.yaml"


# --- side outputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_outputs", "strides"),
    [("fct", 3, [1, 2, 4]), ("pranet", 4, [1, 16, 32, 8]), ("emcad", 4, [1, 8, 16, 32])],
)
def test_side_outputs_only_in_training_mode(name, n_outputs, strides):
    model = tiny(name, num_classes=2)
    x = torch.randn(2, 3, 64, 96)
    model.train()
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == n_outputs
    assert [o.shape[-2:] for o in outs] == [(64 // s, 96 // s) for s in strides]
    assert all(o.shape[:2] == (2, 2) for o in outs)
    model.eval()
    with torch.no_grad():
        main = model(x)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 2, 64, 96)


def test_ssformer_has_a_single_output_in_training_mode():
    model = tiny("ssformer").train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)


def test_pranet_main_output_refines_the_coarser_side_outputs():
    """Each reverse-attention stage adds a residual to the previous prediction: with the residual branches zeroed
    the main output is exactly the partial decoder's map, upsampled."""
    model = tiny("pranet").eval()
    for ra in (model.ra5, model.ra4, model.ra3):
        torch.nn.init.zeros_(ra.head.weight)
        torch.nn.init.zeros_(ra.head.bias)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.encoder(x)
        f3, f4, f5 = (feats[i] for i in model.stages)
        coarse = model.decoder(model.rfb5(f5), model.rfb4(f4), model.rfb3(f3))
        expected = coarse
        for size in (f5.shape[-2:], f4.shape[-2:], f3.shape[-2:], x.shape[-2:]):
            expected = F.interpolate(expected, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected)


# --- encoders ---------------------------------------------------------------------------------------------------


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


def test_pick_stages():
    assert pick_stages([2, 4, 8, 16, 32], (8, 16, 32)) == [2, 3, 4]
    assert pick_stages([4, 8, 16, 32], (32, 4)) == [3, 0]
    with pytest.raises(ValueError, match="stride"):
        pick_stages([4, 8, 16], (4, 8, 16, 32))


def test_fct_default_is_small_and_runs_without_an_encoder():
    model = create_model("fct").eval()
    assert model.input_size == 224 and model.info.default_encoder is None
    assert sum(p.numel() for p in model.parameters()) < 3e6
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_fct_reads_the_image_pyramid():
    """Stages 2-4 take the input image pooled to their scale: their image convs receive gradients."""
    model = tiny("fct").train()
    out = model(torch.randn(1, 3, 64, 64))[0]
    out.sum().backward()
    for block in model.encoder[1:]:
        grad = block.image_conv[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert model.encoder[0].image_conv is None


# --- structure loss ---------------------------------------------------------------------------------------------


def _square_target(size: int = 96, lo: int = 23, hi: int = 73) -> torch.Tensor:
    target = torch.zeros(1, size, size, dtype=torch.long)
    target[:, lo:hi, lo:hi] = 1
    return target


def _confident_logits(target: torch.Tensor, scale: float = 8.0) -> torch.Tensor:
    return (target.float() * 2 - 1)[:, None] * scale


def test_structure_loss_prefers_the_right_answer():
    loss = StructureLoss()
    target = _square_target()
    perfect = _confident_logits(target)
    assert loss(perfect, target) < 0.01
    assert loss(-perfect, target) > 1.5
    assert loss(perfect, target) < loss(torch.zeros_like(perfect), target) < loss(-perfect, target)


def test_structure_loss_weighs_edge_errors_more():
    """The same wrong pixel costs more on the mask's edge than deep inside it (further than the window from any
    edge, weight exactly 1) or far out in the background."""
    loss = StructureLoss(reduction="none")
    target = _square_target()  # rows/cols 23..72 are foreground
    base = _confident_logits(target)
    errors = {}
    for where, (r, c) in {"edge": (23, 48), "inside": (48, 48), "background": (2, 2)}.items():
        logits = base.clone()
        logits[0, 0, r, c] *= -1
        errors[where] = (loss(logits, target) - loss(base, target)).item()
    w = StructureLoss().weights(target[:, None].float())[0, 0]
    assert w[48, 48] == 1.0 and w[23, 48] > 3.0
    assert errors["edge"] > 2 * errors["inside"] > 0
    assert errors["edge"] > 2 * errors["background"] > 0


def _structure_reference(logits: np.ndarray, y: np.ndarray, k: int = 31, smooth: float = 1.0) -> float:
    """The formula, written directly: box mean with zero padding, weighted BCE, weighted IoU."""
    pad = k // 2
    padded = np.pad(y, pad)
    local_mean = np.lib.stride_tricks.sliding_window_view(padded, (k, k)).sum(axis=(-1, -2)) / (k * k)
    w = 1 + 5 * np.abs(local_mean - y)
    p = 1 / (1 + np.exp(-logits))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    wbce = (w * bce).sum() / w.sum()
    inter = (w * p * y).sum()
    union = (w * (p + y)).sum() - inter
    return wbce + 1 - (inter + smooth) / (union + smooth)


def test_structure_loss_value_matches_the_formula():
    rng = np.random.default_rng(0)
    target = np.zeros((2, 40, 56), dtype=np.int64)
    target[0, 5:25, 10:40] = 1
    target[1, 30:38, 3:9] = 1
    logits = rng.normal(0, 2, size=(2, 1, 40, 56))
    values = StructureLoss(reduction="none")(torch.tensor(logits), torch.tensor(target))
    assert values.shape == (2, 1)
    for i in range(2):
        expected = _structure_reference(logits[i, 0], target[i].astype(np.float64))
        assert values[i, 0].item() == pytest.approx(expected, rel=1e-5)
    mean = StructureLoss()(torch.tensor(logits), torch.tensor(target))
    assert mean.item() == pytest.approx(values.mean().item())


def test_structure_loss_softmax_is_the_formula_per_class():
    rng = np.random.default_rng(1)
    target = np.zeros((1, 24, 32), dtype=np.int64)
    target[0, 4:12, 6:20] = 1
    target[0, 14:22, 20:30] = 2
    logits = rng.normal(0, 2, size=(1, 3, 24, 32))
    values = StructureLoss(sigmoid=False, softmax=True, reduction="none")(torch.tensor(logits), torch.tensor(target))
    assert values.shape == (1, 3)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for c in range(3):
        # The sigmoid formula on the logit log(p / (1 - p)) is the formula on p.
        logit_c = np.log(probs[0, c] / (1 - probs[0, c]))
        expected = _structure_reference(logit_c, (target[0] == c).astype(np.float64))
        assert values[0, c].item() == pytest.approx(expected, rel=1e-5)
    no_bg = StructureLoss(sigmoid=False, softmax=True, include_background=False, reduction="none")
    torch.testing.assert_close(no_bg(torch.tensor(logits), torch.tensor(target)), values[:, 1:])


def test_structure_loss_rejects_bad_options():
    with pytest.raises(ValueError, match="sigmoid or softmax"):
        StructureLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="sigmoid or softmax"):
        StructureLoss(sigmoid=False)
    with pytest.raises(ValueError, match="kernel_size"):
        StructureLoss(kernel_size=30)
    with pytest.raises(ValueError, match="reduction"):
        StructureLoss(reduction="max")
    with pytest.raises(ValueError, match="two channels"):
        StructureLoss(sigmoid=False, softmax=True)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))


def test_build_loss_structure_weighs_side_outputs_equally():
    loss = build_loss("structure", 1)
    assert isinstance(loss, DeepSupervisionLoss) and isinstance(loss.loss, StructureLoss)
    target = _square_target(64, 10, 40)
    a, b = torch.randn(1, 1, 64, 64), torch.randn(1, 1, 16, 16)
    b_full = F.interpolate(b, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss([a, b], target), (StructureLoss()(a, target) + StructureLoss()(b_full, target)) / 2)
    assert build_loss("structure", 3).loss.softmax
    with pytest.raises(ValueError, match="structure"):
        build_loss("nope", 1)


def test_pranet_recipe_trains_with_the_structure_loss(data_root, tmp_path):
    """The real train.py on the PraNet recipe (tiny: Lite0 encoder, 64 px, two steps, four real images)."""
    out = tmp_path / "run"
    model_dir = train_cli.main([
        "--config", str(PRANET_CONFIG), "--output-dir", str(out), "--max-steps", "2", "--no-progress",
        "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--model.input_size", "64", "--model.encoder", "tf_efficientnet_lite0", "--model.rfb_channels", "8",
        "--model.ra_channels", "[16, 8, 8]",
    ])
    model = load_model(model_dir)
    assert model.arch == "pranet" and model.config["encoder_weights"] == "imagenet"
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    cfg = train_cli.load_config(PRANET_CONFIG, [])
    assert cfg["train"]["loss"] == "structure" and cfg["model"]["encoder"] == "res2net50_26w_4s"


# --- shared blocks ----------------------------------------------------------------------------------------------


def test_reverse_attention_weights():
    logits = torch.tensor([[[[-30.0, 0.0, 30.0]]]])
    torch.testing.assert_close(reverse_attention_weights(logits), torch.tensor([[[[1.0, 0.5, 0.0]]]]))
    three = torch.tensor([[[[5.0]], [[5.0]], [[-40.0]]]])  # background and class 1 equally likely
    torch.testing.assert_close(reverse_attention_weights(three), torch.full((1, 1, 1, 1), 0.5))


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 4).flatten().tolist() == list(range(6))  # groups that don't divide: unchanged


def test_emcad_attention_gates_are_in_unit_interval():
    model = tiny("emcad").eval()
    seen = []
    for gate in model.gates:
        gate.psi.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64) * 10)
    assert len(seen) == 3
    for g in seen:
        assert g.shape[1] == 1 and g.min() >= 0 and g.max() <= 1
    lgag = LGAG(8, 8, 4).eval()
    g, x = torch.randn(2, 8, 5, 7) * 100, torch.randn(2, 8, 5, 7) * 100
    weights = lgag.gate(g, x)
    assert weights.shape == (2, 1, 5, 7) and weights.min() >= 0 and weights.max() <= 1
    torch.testing.assert_close(lgag(g, x), x * weights)


def test_eucb_upsamples_to_the_skip_size():
    up = EUCB(8, 4)
    assert up(torch.randn(1, 8, 3, 5)).shape == (1, 4, 6, 10)
    assert up(torch.randn(1, 8, 3, 5), size=(7, 9)).shape == (1, 4, 7, 9)


@pytest.mark.parametrize("kv_stride", [1, 2])
def test_conv_attention_is_global(kv_stride):
    """One attention layer lets a far pixel change every output position, which no 3x3 conv stack of this depth
    could; with a stride the keys/values are squeezed and the output keeps the input's shape."""
    torch.manual_seed(0)
    attn = ConvAttention(8, num_heads=2, kv_stride=kv_stride).eval()
    x = torch.randn(1, 8, 12, 16)
    y = x.clone()
    y[..., 11, 15] += 5.0
    with torch.no_grad():
        a, b = attn(x), attn(y)
    assert a.shape == x.shape
    assert ((a - b).abs()[0, :, 0, 0] > 0).any()
    with pytest.raises(ValueError, match="heads"):
        ConvAttention(6, num_heads=4)


def test_wide_focus_sums_dilated_branches():
    wf = WideFocus(4, 6, dilations=(1, 2, 3)).eval()
    assert len(wf.branches) == 3 and [b[0].dilation for b in wf.branches] == [(1, 1), (2, 2), (3, 3)]
    assert wf(torch.randn(1, 4, 9, 11)).shape == (1, 6, 9, 11)
