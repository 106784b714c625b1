"""Region-aware refiner: a small U-Net that corrects a coarse lesion probability map on a crop around a lesion.

It reads the crop's RGB image plus the coarse lesion probability (4 channels) and returns refined logits. The
post-processing step ``refine`` (``medseg_core.postprocess``) cuts the crops, runs this model and pastes the
result back; ``train/make_refiner_data.py`` builds its training crops from a base model's predictions.

Multi-class models: the refiner always reads one probability channel, the lesion probability ``1 - P(background)``,
and usually predicts one channel (the refined lesion probability). It is class-agnostic on purpose: one refiner
trained on binary polyp data serves every base model, and the classes of refined pixels come from the base
model's probabilities (``refine`` and ``region_class_consistency``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct
from .registry import register_model

__all__ = ["Refiner"]

class _Up(nn.Module):
    """Upsample to the skip's size, concatenate it, two 3x3 ConvBNAct."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBNAct(in_ch + skip_ch, out_ch), ConvBNAct(out_ch, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


@register_model("refiner")
class Refiner(SegModel):
    """A plain-convolution U-Net that predicts a correction to the coarse map's logit.

    The head is initialised at zero and the coarse probability's logit is added to its output (to the single
    channel when ``num_classes`` is 1, to every foreground channel otherwise), so an untrained refiner returns
    the coarse map: training only has to learn where the base model was wrong.

    Args:
        in_channels: RGB + the coarse lesion probability (the last channel, in [0, 1], not normalised).
        num_classes: 1 (refined lesion probability, sigmoid) or C (softmax over C classes).
        widths: channels of each encoder level; every level after the first halves the resolution.
        input_size: side of the square crops the refiner reads.
        mean, std: normalisation of the RGB channels (ImageNet's by default); the probability is not normalised.
    """

    info = ModelInfo(
        paper="Region-wise refinement of a coarse mask from the image and the mask, in the spirit of CascadePSP "
        "(Cheng et al., CVPR 2020)",
        default_encoder=None,
        input_size=128,
        segments_images=False,
    )

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        input_size: int = 128,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels)
        if in_channels < 2:
            raise ValueError("the refiner reads the image and a probability map: in_channels must be at least 2")
        if len(widths) < 2:
            raise ValueError("widths needs at least two levels")
        widths = [int(w) for w in widths]
        self.down = nn.ModuleList([nn.Sequential(ConvBNAct(in_channels, widths[0]), ConvBNAct(widths[0], widths[0]))])
        for prev, w in zip(widths[:-1], widths[1:]):
            self.down.append(nn.Sequential(ConvBNAct(prev, w, stride=2), ConvBNAct(w, w)))
        self.up = nn.ModuleList(
            [_Up(deep, skip, skip) for deep, skip in zip(widths[:0:-1], widths[-2::-1])]
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features, y = [], x
        for level in self.down:
            y = level(y)
            features.append(y)
        return features

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = features[-1]
        for block, skip in zip(self.up, features[-2::-1]):
            y = block(y, skip)
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W), last channel the coarse lesion probability -> logits (N, num_classes, H, W):
        the encoder-decoder's correction plus the coarse map's logit."""
        delta = super().forward(x)
        prior = torch.logit(x[:, -1:].clamp(1e-4, 1 - 1e-4))
        if self.num_classes == 1:
            return delta + prior
        # Background keeps logit 0; every foreground class starts from the coarse lesion logit.
        zeros = torch.zeros_like(prior)
        return delta + torch.cat([zeros, prior.expand(-1, self.num_classes - 1, -1, -1)], dim=1)
