import pytest
import torch

from medseg_core.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, build_loss


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
