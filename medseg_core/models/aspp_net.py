"""ASPP-Net: the cardiac-MRI reference design, a plain convolutional encoder-decoder with an ASPP bottleneck.

No pretrained backbone: stages of two 3x3 ConvBNAct (BatchNorm, ReLU) separated by 2x2 max-pooling, atrous
spatial pyramid pooling at the bottom for multi-scale context, and an upsampling decoder that concatenates the
encoder feature of each scale. The reference design trains it with softmax cross-entropy over
``num_classes >= 2`` (background included); ``num_classes=1`` (sigmoid) works as for every model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ASPP, ConvBNAct
from .registry import register_model

__all__ = ["ASPPNet"]

def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(ConvBNAct(in_ch, out_ch), ConvBNAct(out_ch, out_ch))


@register_model("aspp_net")
class ASPPNet(SegModel):
    """Plain conv encoder, ASPP bottleneck, upsampling decoder with skips.

    Args:
        num_classes: output classes; the reference recipe uses 2 with cross-entropy.
        widths: encoder stage widths, shallow to deep; the decoder mirrors them.
        aspp_channels: width of the ASPP branches and output.
        atrous_rates: ASPP dilations. The bottleneck grid is 1/(2 ** len(widths)) of the input, 16x16 for a
            256-pixel image with four stages, so the rates are about half DeepLab's (6, 12, 18) on its 33x33 grid.
        dropout: dropout after the ASPP projection.
        in_channels, input_size, mean, std: as for every model (:class:`~medseg_core.models.SegModel`); the
            model has no pretrained weights, so mean/std default to ImageNet's statistics.
    """

    info = ModelInfo(
        paper="Plain encoder-decoder with atrous spatial pyramid pooling (the cardiac-MRI reference design; ASPP "
        "from Chen et al., DeepLabV3, 2017)",
        input_size=256,
    )

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        widths: Sequence[int] = (32, 64, 128, 256),
        aspp_channels: int = 256,
        atrous_rates: Sequence[int] = (3, 6, 9),
        dropout: float = 0.1,
        input_size: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels)
        if not widths:
            raise ValueError("widths needs at least one encoder stage")
        widths = [int(w) for w in widths]
        self.encoder = nn.ModuleList(_double_conv(c, w) for c, w in zip([in_channels, *widths[:-1]], widths))
        self.aspp = ASPP(widths[-1], aspp_channels, rates=atrous_rates, dropout=dropout)
        decoder, in_ch = [], aspp_channels
        for w in widths[::-1]:
            decoder.append(_double_conv(in_ch + w, w))
            in_ch = w
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x -> each stage's output (the skips), then the last one max-pooled (the bottleneck's input)."""
        features, y = [], x
        for stage in self.encoder:
            y = stage(y)
            features.append(y)
            y = F.max_pool2d(y, 2)
        return [*features, y]

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = self.aspp(features[-1])
        for block, skip in zip(self.decoder, features[-2::-1]):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.head(y)
