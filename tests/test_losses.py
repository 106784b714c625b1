import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg_core.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, StructureLoss, build_loss


def test_dice_loss_hand_values():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # 8 px
    perfect = torch.where(target[:, None] > 0, 20.0, -20.0)
    assert DiceLoss(sigmoid=True)(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 1, 4, 4)  # probability 0.5 everywhere: Dice = 2*4 / (8 + 8)
    assert DiceLoss(sigmoid=True, smooth_nr=0, smooth_dr=0)(half, target).item() == pytest.approx(0.5)


def test_dice_loss_reduction_none_is_per_image_per_class():
    logits = torch.randn(3, 4, 8, 8)
    target = torch.randint(0, 4, (3, 8, 8))
    per = DiceLoss(softmax=True, include_background=False, reduction="none")(logits, target)
    assert per.shape == (3, 3)
    assert DiceLoss(softmax=True, include_background=False)(logits, target).item() == pytest.approx(per.mean().item())


def test_batch_dice_sums_over_the_batch():
    # Image 0 holds class 1, image 1 does not, and both predict a little of it: per image, the empty image's Dice
    # of class 1 is ~0 (loss ~1); over the batch its false positives only enlarge the batch's denominator.
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    logits = torch.full((2, 2, 4, 4), -5.0)
    logits[:, 0] = 5.0
    logits[0, 1, :2], logits[0, 0, :2] = 5.0, -5.0
    logits[1, 1, 0, 0], logits[1, 0, 0, 0] = 5.0, -5.0  # one false-positive pixel in the empty image
    p = logits.softmax(1)[:, 1]
    t = (target == 1).float()
    inter, denom = (p * t).sum(), p.sum() + t.sum()
    batch = DiceLoss(softmax=True, include_background=False, batch=True, reduction="none")(logits, target)
    assert batch.shape == (1,) and batch.item() == pytest.approx(1 - 2 * inter.item() / denom.item(), abs=1e-5)
    per_image = DiceLoss(softmax=True, include_background=False, reduction="none")(logits, target)
    assert per_image[1].item() > 0.99 and batch.item() < 0.1
    with pytest.raises(ValueError, match="batch Dice"):
        build_loss("structure", 3, batch_dice=True)
    assert build_loss("dice_ce", 3, batch_dice=True).loss.dice.batch


def test_incompatible_options_are_rejected():
    with pytest.raises(ValueError):
        DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError):
        DiceLoss(reduction="avg")
    with pytest.raises(ValueError):
        build_loss("focal", 1)


def test_dice_ce_binary_and_multiclass():
    target = torch.randint(0, 2, (2, 8, 8))
    logits = torch.randn(2, 1, 8, 8)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    dice = DiceLoss(sigmoid=True)(logits, target)
    assert DiceCELoss(1)(logits, target).item() == pytest.approx((bce + dice).item(), rel=1e-5)
    logits3 = torch.randn(2, 3, 8, 8)
    target3 = torch.randint(0, 3, (2, 8, 8))
    ce = torch.nn.functional.cross_entropy(logits3, target3)
    dice3 = DiceLoss(softmax=True, include_background=False)(logits3, target3)
    assert DiceCELoss(3)(logits3, target3).item() == pytest.approx((ce + dice3).item(), rel=1e-5)


def test_deep_supervision_weights_and_resizing():
    base = DiceCELoss(1)
    target = torch.randint(0, 2, (1, 16, 16))
    main, side = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 8, 8)
    side_up = torch.nn.functional.interpolate(side, size=(16, 16), mode="bilinear", align_corners=False)
    expected = (base(main, target) + 0.5 * base(side_up, target)) / 1.5
    assert DeepSupervisionLoss(base)([main, side], target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert DeepSupervisionLoss(base)(main, target).item() == pytest.approx(base(main, target).item())
    with pytest.raises(ValueError):
        DeepSupervisionLoss(base, weights=[1.0])([main, side], target)


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


def test_skip_absent_leaves_a_class_missing_from_the_batch_to_the_cross_entropy():
    """smp's multi-label Dice: a class absent from every target of the batch adds no Dice loss (no gradient),
    where the plain batch Dice pushes it towards never being drawn; a present class is unchanged."""
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.zeros(2, 3, 8, 8)
    target[0, 1, :4, :4] = 1
    skipped = DiceLoss(sigmoid=True, batch=True, skip_absent=True)(logits, target)
    skipped.backward()
    assert logits.grad[:, 0].abs().sum() == 0 and logits.grad[:, 2].abs().sum() == 0
    assert logits.grad[:, 1].abs().sum() > 0
    per_class = DiceLoss(sigmoid=True, batch=True, reduction="none")(logits.detach(), target)
    torch.testing.assert_close(skipped.detach(), per_class[1])
    plain = torch.randn(2, 3, 8, 8, requires_grad=True)
    DiceLoss(sigmoid=True, batch=True)(plain, target).backward()
    assert plain.grad[:, 0].abs().sum() > 0
    none_present = DiceLoss(sigmoid=True, skip_absent=True)(logits.detach(), torch.zeros(2, 3, 8, 8))
    assert none_present.item() == 0.0
    with pytest.raises(ValueError, match="dice_ce and dice"):
        build_loss("structure", 2, dice_skip_absent=True)
    assert isinstance(build_loss("dice_ce", 3, multilabel=True, dice_skip_absent=True).loss.dice.skip_absent, bool)
