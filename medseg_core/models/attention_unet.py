"""Attention U-Net (Oktay et al., MIDL 2018): a U-Net whose skip connections pass through additive attention gates.

Each skip is gated by the decoder feature one level deeper (the coarser "gating signal"), so the decoder
receives encoder features only where the deeper context says they matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .registry import register_model
from .unet import UNetDecoderBlock

__all__ = ["AttentionGate", "AttentionUNet"]


class AttentionGate(nn.Module):
    """Additive attention gate (Attention U-Net, Oktay et al. 2018) on a skip connection.

    The skip ``x`` is projected and pooled to the gating signal's grid, added to the projected gate ``g``,
    passed through ReLU, a 1x1 conv to one channel and a sigmoid; the coefficients are resampled to the skip's
    size and scale it.

    Args:
        skip_ch: channels of the skip ``x``; gate_ch: channels of the coarser gating signal ``g``.
        inter_ch: width of the joint space.

    Shapes: x (N, skip_ch, H, W), g (N, gate_ch, h, w) -> gated x (N, skip_ch, H, W), alpha (N, 1, H, W) in [0, 1].
    """

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int | None = None) -> None:
        super().__init__()
        inter_ch = inter_ch or max(1, skip_ch // 2)
        self.theta_x = nn.Conv2d(skip_ch, inter_ch, 1, bias=False)
        self.phi_g = nn.Conv2d(gate_ch, inter_ch, 1, bias=True)
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1, bias=True), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta_x(x)
        if theta.shape[-2:] != g.shape[-2:]:
            # Grid attention as in the paper: coefficients are computed on the coarse grid of the gating signal.
            theta = F.adaptive_avg_pool2d(theta, g.shape[-2:])
        alpha = self.psi(F.relu(theta + self.phi_g(g)))
        if alpha.shape[-2:] != x.shape[-2:]:
            alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * alpha, alpha


@register_model("attention_unet")
class AttentionUNet(SegModel):
    """Attention U-Net on a timm encoder; the decoder is sized from ``feature_info``.

    Args:
        encoder: timm model name; ``tf_efficientnet_lite0/1/2`` have ImageNet weights offline.
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        in_channels: input image channels.
        num_classes: 1 for binary (sigmoid), C for softmax over C classes.
        decoder_channels: one width per decoder block, deep to shallow; at least as many blocks as skips.
        input_size, mean, std: preprocessing; mean/std default to the encoder's.
    """

    info = ModelInfo(
        paper="Oktay et al., Attention U-Net: Learning Where to Look for the Pancreas, MIDL 2018",
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
        blocks, gates, in_ch = [], [], channels[-1]
        for i, out_ch in enumerate(decoder_channels):
            skip_ch = skips[i] if i < len(skips) else 0
            if skip_ch:
                gates.append(AttentionGate(skip_ch, gate_ch=in_ch, inter_ch=max(1, min(skip_ch, in_ch) // 2)))
            blocks.append(UNetDecoderBlock(in_ch, skip_ch, out_ch))
            in_ch = out_ch
        self.gates = nn.ModuleList(gates)
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=3, padding=1)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.encoder(x)
        skips = feats[:-1][::-1]
        y, alphas = feats[-1], []
        for i, block in enumerate(self.decoder):
            skip = None
            if i < len(skips):
                skip, alpha = self.gates[i](skips[i], y)
                alphas.append(alpha)
            y = block(y, skip)
        return self._resize_to(self.head(y), x), alphas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        return self._decode(x)[0]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates' coefficients for ``x``, deep to shallow: one (N, 1, h_i, w_i) map in [0, 1] per skip."""
        return self._decode(x)[1]
