"""Attention U-Net (Oktay et al., MIDL 2018): a U-Net whose skip connections pass through additive attention gates.

Each skip is gated by the decoder feature one level deeper (the coarser "gating signal"), so the decoder
receives encoder features only where the deeper context says they matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo
from .registry import register_model
from .unet import UNet, UNetDecoder, UNetDecoderBlock, unet_decoder_widths

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
class AttentionUNet(UNet):
    """Attention U-Net on a timm encoder: a :class:`~medseg_core.models.unet.UNet` (the same arguments) whose skips
    pass through attention gates before the decoder blocks fuse them."""

    info = ModelInfo(
        paper="Oktay et al., Attention U-Net: Learning Where to Look for the Pancreas, MIDL 2018",
        default_encoder="tf_efficientnet_lite0",
    )

    def _build_decoder(self, channels: Sequence[int], decoder_channels: Sequence[int], encoder: str) -> UNetDecoder:
        blocks, gates = [], []
        for in_ch, skip_ch, out_ch in unet_decoder_widths(channels, decoder_channels, encoder):
            if skip_ch:  # each gate is driven by the decoder state one level deeper
                gates.append(AttentionGate(skip_ch, gate_ch=in_ch, inter_ch=max(1, min(skip_ch, in_ch) // 2)))
            blocks.append(UNetDecoderBlock(in_ch, skip_ch, out_ch))
        self.gates = nn.ModuleList(gates)
        return UNetDecoder(blocks)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(features, self.gates))

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates' coefficients for ``x``, deep to shallow: one (N, 1, h_i, w_i) map in [0, 1] per skip."""
        maps: list[torch.Tensor] = []
        self.decoder(self.encode(x), self.gates, maps)
        return maps
