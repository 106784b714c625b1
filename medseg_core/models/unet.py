"""U-Net (Ronneberger et al., MICCAI 2015) on a timm encoder, decoder sized from ``feature_info``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct
from .registry import register_model

__all__ = ["UNet", "UNetDecoder", "UNetDecoderBlock", "unet_decoder_widths"]


class UNetDecoderBlock(nn.Module):
    """Upsample to the skip's size (or by 2 without a skip), concatenate the skip, two 3x3 ConvBNAct."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBNAct(in_ch + skip_ch, out_ch), ConvBNAct(out_ch, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


def unet_decoder_widths(
    channels: Sequence[int], decoder_channels: Sequence[int], encoder: str
) -> list[tuple[int, int, int]]:
    """(input, skip, output) channels of each U-Net decoder block, deep to shallow, over encoder features of
    ``channels`` (shallow to deep); blocks beyond the skips have none (skip 0) and upsample by 2."""
    skips = list(channels[:-1][::-1])
    if len(decoder_channels) < len(skips):
        raise ValueError(f"decoder_channels needs at least {len(skips)} widths for {encoder}")
    widths, in_ch = [], channels[-1]
    for i, out_ch in enumerate(decoder_channels):
        widths.append((in_ch, skips[i] if i < len(skips) else 0, out_ch))
        in_ch = out_ch
    return widths


class UNetDecoder(nn.ModuleList):
    """U-Net decoder: its blocks run deep to shallow, each fusing the next skip (optionally through an attention
    gate). Shapes: features shallow to deep -> (N, last block's width, H', W')."""

    @classmethod
    def build(cls, channels: Sequence[int], decoder_channels: Sequence[int], encoder: str) -> UNetDecoder:
        return cls(UNetDecoderBlock(*widths) for widths in unet_decoder_widths(channels, decoder_channels, encoder))

    def forward(
        self,
        features: list[torch.Tensor],
        gates: nn.ModuleList | None = None,
        attention: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``gates[i](skip, y) -> (gated skip, coefficients)`` gates the i-th skip; the coefficients are appended
        to ``attention`` when given."""
        skips = features[:-1][::-1]
        y = features[-1]
        for i, block in enumerate(self):
            skip = skips[i] if i < len(skips) else None
            if skip is not None and gates is not None:
                skip, alpha = gates[i](skip, y)
                if attention is not None:
                    attention.append(alpha)
            y = block(y, skip)
        return y


@register_model("unet")
class UNet(SegModel):
    """U-Net: encoder features from deep to shallow, each upsampled and fused with its skip.

    Args:
        decoder_channels: one width per decoder block; there must be at least as many blocks as skips.
        encoder, encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`).
    """

    info = ModelInfo(
        paper="Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015",
        default_encoder="tf_efficientnet_lite0",
    )

    def __init__(
        self,
        encoder: str = "tf_efficientnet_lite0",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights)
        self.decoder = self._build_decoder(self.encoder.feature_info.channels(), decoder_channels, encoder)
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)

    def _build_decoder(self, channels: Sequence[int], decoder_channels: Sequence[int], encoder: str) -> UNetDecoder:
        return UNetDecoder.build(channels, decoder_channels, encoder)
