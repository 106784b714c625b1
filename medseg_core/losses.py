"""Losses in MONAI's vocabulary: ``sigmoid`` / ``softmax``, ``include_background``, ``smooth_nr`` / ``smooth_dr``,
``reduction``.

Binary models have one output channel (sigmoid); multi-class models have ``C`` channels (softmax). Targets are
integer class maps ``(N, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DeepSupervisionLoss", "DiceCELoss", "DiceLoss", "build_loss"]

Reduction = Literal["mean", "sum", "none"]


def _one_hot(target: torch.Tensor, num_channels: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, C, H, W) float; one channel means the binary foreground map."""
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
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (an (N, C) tensor of per-image, per-class losses).
    """

    def __init__(
        self,
        sigmoid: bool = False,
        softmax: bool = False,
        include_background: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
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
        dims = (2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        loss = 1.0 - (2.0 * inter + self.smooth_nr) / (denom + self.smooth_dr)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class DiceCELoss(nn.Module):
    """Cross-entropy (BCE for one channel, CE for several) plus soft Dice, weighted."""

    def __init__(
        self,
        num_classes: int = 1,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("DiceCELoss: num_classes must be >= 1")
        self.binary = num_classes == 1
        self.dice = DiceLoss(sigmoid=self.binary, softmax=not self.binary, include_background=include_background)
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
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


def build_loss(name: str, num_classes: int, deep_supervision_weights: Sequence[float] | None = None) -> nn.Module:
    """The training loss named in a recipe, wrapped for deep supervision."""
    if name == "dice_ce":
        base: nn.Module = DiceCELoss(num_classes=num_classes)
    elif name == "ce":
        base = DiceCELoss(num_classes=num_classes, lambda_dice=0.0)
    elif name == "dice":
        base = DiceCELoss(num_classes=num_classes, lambda_ce=0.0)
    else:
        raise ValueError(f"unknown loss {name!r}; choose from dice_ce, ce, dice")
    return DeepSupervisionLoss(base, deep_supervision_weights)
