"""U-Net (Ronneberger et al., MICCAI 2015) on a timm encoder, decoder sized from ``feature_info``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .layers import ConvBNAct
from .registry import register_model

__all__ = ["UNet", "UNetDecoderBlock"]


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


@register_model("unet")
class UNet(SegModel):
    """U-Net: encoder features from deep to shallow, each upsampled and fused with its skip.

    Args:
        encoder: timm model name; ``tf_efficientnet_lite0/1/2`` have ImageNet weights offline.
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        in_channels: input image channels.
        num_classes: 1 for binary (sigmoid), C for softmax over C classes.
        decoder_channels: one width per decoder block; there must be at least as many blocks as skips.
        input_size, mean, std: preprocessing; mean/std default to the encoder's.
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
        enc_mean, enc_std = encoder_normalization(encoder)
        super().__init__(num_classes, input_size, mean or enc_mean, std or enc_std, in_channels)
        self.encoder = create_encoder(encoder, pretrained=wants_imagenet(encoder_weights), in_chans=in_channels)
        channels = self.encoder.feature_info.channels()
        skips = channels[:-1][::-1]
        if len(decoder_channels) < len(skips):
            raise ValueError(f"decoder_channels needs at least {len(skips)} widths for {encoder}")
        blocks, in_ch = [], channels[-1]
        for i, out_ch in enumerate(decoder_channels):
            skip_ch = skips[i] if i < len(skips) else 0
            blocks.append(UNetDecoderBlock(in_ch, skip_ch, out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        feats = self.encoder(x)
        skips = feats[:-1][::-1]
        y = feats[-1]
        for i, block in enumerate(self.decoder):
            y = block(y, skips[i] if i < len(skips) else None)
        return self._resize_to(self.head(y), x)
