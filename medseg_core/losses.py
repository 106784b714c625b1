"""Losses in MONAI's vocabulary: ``sigmoid`` / ``softmax``, ``include_background``, ``smooth_nr`` / ``smooth_dr``,
``reduction``.

Binary models have one output channel (sigmoid); multi-class models have ``C`` channels (softmax); multi-label
models have ``K`` channels, one sigmoid each. Targets are integer class maps ``(N, H, W)``, or 0/1 stacks
``(N, K, H, W)`` for multi-label models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DeepSupervisionLoss", "DiceCELoss", "DiceLoss", "StructureLoss", "build_loss"]

Reduction = Literal["mean", "sum", "none"]


def _one_hot(target: torch.Tensor, num_channels: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, C, H, W) float; one channel means the binary foreground map. A multi-label
    target (N, K, H, W) is already one map per channel."""
    if target.ndim == 4:
        if target.shape[1] != num_channels:
            raise ValueError(f"a multi-label target has {target.shape[1]} classes, the logits {num_channels}")
        return target.float()
    if num_channels == 1:
        return (target > 0).unsqueeze(1).float()
    return F.one_hot(target.long(), num_channels).permute(0, 3, 1, 2).float()


class DiceLoss(nn.Module):
    """Soft Dice loss, per image and per class, then reduced.

    Args:
        sigmoid: apply a sigmoid to the logits (binary, one channel).
        softmax: apply a softmax over channels (multi-class).
        include_background: keep channel 0 in the mean (only meaningful with ``softmax``).
        smooth_nr, smooth_dr: added to numerator and denominator, so empty masks give a finite loss.
        batch: sum intersection and areas over the whole batch before dividing (nnU-Net's "batch Dice"): a class
            absent from an image then adds its false positives to the batch's sums instead of a loss of its own
            near 1, which per image pushes a rare class towards never being drawn.
        skip_absent: a class absent from the target (of the image, or of the whole batch with ``batch``) adds no
            Dice loss, as in segmentation_models_pytorch's ``DiceLoss``: its false positives are then left to the
            cross-entropy term.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (an (N, C) tensor of per-image, per-class losses; (C,)
            with ``batch``).
    """

    def __init__(
        self,
        sigmoid: bool = False,
        softmax: bool = False,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        skip_absent: bool = False,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if sigmoid and softmax:
            raise ValueError("DiceLoss: choose sigmoid or softmax, not both")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"DiceLoss: unknown reduction {reduction!r}")
        self.sigmoid, self.softmax = sigmoid, softmax
        self.include_background = include_background
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr
        self.batch = batch
        self.skip_absent = skip_absent
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W); target (N, H, W) integer classes."""
        probs = logits.float()
        if self.sigmoid:
            probs = probs.sigmoid()
        elif self.softmax:
            probs = probs.softmax(dim=1)
        onehot = _one_hot(target, probs.shape[1])
        if not self.include_background and probs.shape[1] > 1:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = (0, 2, 3) if self.batch else (2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        loss = 1.0 - (2.0 * inter + self.smooth_nr) / (denom + self.smooth_dr)
        if self.skip_absent:
            present = (onehot.sum(dims) > 0).to(loss.dtype)
            loss = loss * present
            if self.reduction == "mean":  # over the classes present; 0 (with a gradient path) when none is
                return loss.sum() / present.sum().clamp(min=1.0)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class DiceCELoss(nn.Module):
    """Cross-entropy (BCE for one channel, CE for several) plus soft Dice, weighted. With ``multilabel``, BCE and
    Dice per channel (each class its own sigmoid; targets (N, K, H, W)); ``batch``: the Dice over the whole batch;
    ``skip_absent``: classes absent from the target add no Dice loss (see :class:`DiceLoss`)."""

    def __init__(
        self,
        num_classes: int = 1,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = False,
        multilabel: bool = False,
        batch: bool = False,
        skip_absent: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("DiceCELoss: num_classes must be >= 1")
        self.binary = num_classes == 1 or multilabel
        self.multilabel = multilabel
        self.dice = DiceLoss(sigmoid=self.binary, softmax=not self.binary,
                             include_background=include_background or multilabel, batch=batch,
                             skip_absent=skip_absent)
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            if target.ndim != 4:
                raise ValueError("a multi-label loss needs (N, K, H, W) targets")
            ce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        elif self.binary:
            ce = F.binary_cross_entropy_with_logits(logits[:, 0].float(), (target > 0).float())
        else:
            ce = F.cross_entropy(logits.float(), target.long())
        return self.lambda_ce * ce + self.lambda_dice * self.dice(logits, target)


class DeepSupervisionLoss(nn.Module):
    """Applies ``loss`` to the main output and every deep-supervision output (resized to the target), weighted.

    Weights default to halving at each level: 1, 0.5, 0.25, ...; they are normalised to sum to one.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = self.weights or [0.5**i for i in range(len(outputs))]
        if len(weights) < len(outputs):
            raise ValueError(f"DeepSupervisionLoss: {len(outputs)} outputs but {len(weights)} weights")
        total = torch.zeros((), device=target.device)
        for w, out in zip(weights, outputs):
            if out.shape[-2:] != target.shape[-2:]:
                out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
            total = total + w * self.loss(out, target)
        return total / sum(weights[: len(outputs)])


def build_loss(name: str, num_classes: int, deep_supervision_weights: Sequence[float] | None = None,
               multilabel: bool = False, batch_dice: bool = False, dice_skip_absent: bool = False) -> nn.Module:
    """The training loss named in a recipe, wrapped for deep supervision. ``multilabel``: BCE + Dice per class;
    ``batch_dice``: the Dice term over the whole batch instead of per image; ``dice_skip_absent``: a class absent
    from the target adds no Dice loss (``dice_ce`` and ``dice``)."""
    if (batch_dice or dice_skip_absent) and name not in ("dice_ce", "dice"):
        raise ValueError(f"batch Dice and skipping absent classes apply to the dice_ce and dice losses, not {name!r}")
    if name == "dice_ce":
        base: nn.Module = DiceCELoss(num_classes=num_classes, multilabel=multilabel, batch=batch_dice,
                                     skip_absent=dice_skip_absent)
    elif name == "ce":
        base = DiceCELoss(num_classes=num_classes, lambda_dice=0.0, multilabel=multilabel)
    elif name == "dice":
        base = DiceCELoss(num_classes=num_classes, lambda_ce=0.0, multilabel=multilabel, batch=batch_dice,
                          skip_absent=dice_skip_absent)
    elif name == "structure" and multilabel:
        raise ValueError("the structure loss is for binary and multi-class models; use dice_ce for multi-label")
    elif name == "structure":
        base = StructureLoss(sigmoid=num_classes == 1, softmax=num_classes > 1, include_background=False)
        # PraNet sums the loss of every side output with the same weight (8 entries: more than any model has).
        deep_supervision_weights = deep_supervision_weights or [1.0] * 8
    else:
        raise ValueError(f"unknown loss {name!r}; choose from dice_ce, ce, dice, structure")
    return DeepSupervisionLoss(base, deep_supervision_weights)


class StructureLoss(nn.Module):
    """PraNet's structure loss (Fan et al. 2020, after F3Net): boundary-weighted BCE plus boundary-weighted IoU.

    Each pixel weighs ``1 + boundary_weight * |avg_pool_k(y) - y|`` for the (one-hot) target ``y``: 1 far from
    any edge, rising to about ``1 + boundary_weight / 2`` on a mask's boundary, so errors along edges cost more.
    Per image and class::

        wbce = sum(w * bce) / sum(w)
        wiou = 1 - (sum(w * p * y) + smooth_nr) / (sum(w * (p + y - p * y)) + smooth_dr)

    Args:
        sigmoid: logits are per-channel sigmoid (binary with one channel).
        softmax: logits are softmax over channels (multi-class); the BCE is then on each class's probability.
        include_background: keep channel 0 (only meaningful with ``softmax``).
        kernel_size: side of the averaging window that finds edges (31 in PraNet, at 352 px).
        boundary_weight: how much more an edge pixel can weigh (5 in PraNet).
        smooth_nr, smooth_dr: added to the IoU's numerator and denominator (1 in PraNet).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (an (N, C) tensor of per-image, per-class losses).
    """

    def __init__(
        self,
        sigmoid: bool = True,
        softmax: bool = False,
        include_background: bool = True,
        kernel_size: int = 31,
        boundary_weight: float = 5.0,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if sigmoid == softmax:
            raise ValueError("StructureLoss: choose exactly one of sigmoid or softmax (it needs probabilities)")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"StructureLoss: kernel_size must be odd and positive, got {kernel_size}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"StructureLoss: unknown reduction {reduction!r}")
        self.sigmoid, self.softmax = sigmoid, softmax
        self.include_background = include_background
        self.kernel_size, self.boundary_weight = kernel_size, boundary_weight
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr
        self.reduction = reduction

    def weights(self, onehot: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights of a (N, C, H, W) float target, same shape; zero padding as in PraNet."""
        k = self.kernel_size
        local_mean = F.avg_pool2d(onehot, k, stride=1, padding=k // 2, count_include_pad=True)
        return 1.0 + self.boundary_weight * (local_mean - onehot).abs()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C, H, W); target (N, H, W) integer classes."""
        logits = logits.float()
        if self.softmax and logits.shape[1] < 2:
            raise ValueError("StructureLoss: softmax needs at least two channels; use sigmoid for one")
        onehot = _one_hot(target, logits.shape[1])
        if self.sigmoid:
            probs = logits.sigmoid()
            bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        else:
            log_p = logits.log_softmax(dim=1)
            probs = log_p.exp()
            # log(1 - p) from the other classes' log-sum-exp, which stays finite where p -> 1.
            log_not_p = torch.stack(
                [torch.cat([logits[:, :c], logits[:, c + 1 :]], 1).logsumexp(1) for c in range(logits.shape[1])], 1
            ) - logits.logsumexp(1, keepdim=True)
            bce = -(onehot * log_p + (1.0 - onehot) * log_not_p)
        if self.softmax and not self.include_background:
            probs, onehot, bce = probs[:, 1:], onehot[:, 1:], bce[:, 1:]
        w = self.weights(onehot)
        dims = (2, 3)
        wbce = (w * bce).sum(dims) / w.sum(dims)
        inter = (w * probs * onehot).sum(dims)
        union = (w * (probs + onehot)).sum(dims) - inter
        wiou = 1.0 - (inter + self.smooth_nr) / (union + self.smooth_dr)
        loss = wbce + wiou
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
