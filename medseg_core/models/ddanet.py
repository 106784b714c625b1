"""DDANet (Tomar et al., ICPR workshops 2021, arXiv 2012.15245): one shared encoder, two decoders.

The encoder and decoders are built from residual blocks with squeeze-and-excitation. One decoder predicts the
mask; the other reconstructs the grey version of the input, and each of its blocks also emits a spatial attention
map (1x1 conv + sigmoid) that multiplies the mask decoder's block at the same scale. The reconstruction is
trained with an MSE loss against the grey input, exposed through :meth:`DDANet.auxiliary_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct, get_act, get_norm
from .registry import register_model

__all__ = ["DDANet", "ResidualBlock", "SEBlock"]

# ITU-R BT.601 luma weights: the usual definition of "grey" for an RGB image.
_LUMA = (0.299, 0.587, 0.114)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool, bottleneck MLP, sigmoid channel weights.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class ResidualBlock(nn.Module):
    """Two 3x3 ConvBN layers with an identity (or 1x1 projection) shortcut, then the activation and, optionally,
    squeeze-and-excitation (as in DDANet's encoder and decoder blocks).

    Args:
        in_ch, out_ch: channels; stride: of the first conv and of the projection.
        se_reduction: SE bottleneck ratio, or None for no SE.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        se_reduction: int | None = None,
        norm_layer: str | type[nn.Module] = "batchnorm",
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        norm = get_norm(norm_layer)
        self.body = nn.Sequential(
            ConvBNAct(in_ch, out_ch, 3, stride=stride, norm_layer=norm_layer, act_layer=act_layer),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            norm(out_ch),
        )
        self.shortcut = (
            nn.Identity() if in_ch == out_ch and stride == 1
            else nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))
        )
        self.act = get_act(act_layer)()
        self.se = SEBlock(out_ch, se_reduction) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.act(self.body(x) + self.shortcut(x)))


class _DecoderBlock(nn.Module):
    """4x4 transposed conv (x2), concatenate the encoder skip, residual SE block."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, se_reduction: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)
        self.block = ResidualBlock(out_ch + skip_ch, out_ch, se_reduction=se_reduction)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd input sizes: pooling floored, so match the skip exactly
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


@register_model("ddanet")
class DDANet(SegModel):
    """Dual Decoder Attention Network.

    Args:
        widths: channels of the encoder blocks, shallow to deep, then of the bridge; every block but the first
            follows a 2x2 max-pool, so the bridge sits at stride ``2 ** (len(widths) - 1)``.
        se_reduction: squeeze-and-excitation ratio of every residual block.
        reconstruction_weight: weight of the grey-reconstruction MSE added to the segmentation loss in training.
        in_channels, num_classes, input_size, mean, std: as for every model (:class:`~medseg_core.models.SegModel`);
            the model has no pretrained weights, so mean/std default to ImageNet's statistics.
    """

    info = ModelInfo(
        paper="Tomar et al., DDANet: Dual Decoder Attention Network for Automatic Polyp Segmentation, "
        "ICPR 2020 workshops (arXiv 2012.15245)",
        input_size=256,
    )

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        se_reduction: int = 8,
        reconstruction_weight: float = 1.0,
        input_size: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels)
        if len(widths) < 2:
            raise ValueError("DDANet needs at least one encoder block and a bridge in widths")
        if reconstruction_weight < 0:
            raise ValueError(f"reconstruction_weight must be >= 0, got {reconstruction_weight}")
        self.reconstruction_weight = float(reconstruction_weight)
        widths = [int(w) for w in widths]
        self.encoder = nn.ModuleList(
            ResidualBlock(in_channels if i == 0 else widths[i - 1], w, se_reduction=se_reduction)
            for i, w in enumerate(widths)
        )
        skips = widths[:-1][::-1]
        ins = [widths[-1], *skips[:-1]]
        self.mask_decoder = nn.ModuleList(_DecoderBlock(i, s, s, se_reduction) for i, s in zip(ins, skips))
        self.grey_decoder = nn.ModuleList(_DecoderBlock(i, s, s, se_reduction) for i, s in zip(ins, skips))
        self.attention = nn.ModuleList(nn.Sequential(nn.Conv2d(s, 1, 1), nn.Sigmoid()) for s in skips)
        self.head = nn.Conv2d(skips[-1], num_classes, kernel_size=1)
        self.grey_head = nn.Sequential(nn.Conv2d(skips[-1], 1, kernel_size=1), nn.Sigmoid())
        # The normalisation, to recover the [0, 1] grey target from the normalised input; not saved with the weights.
        self.register_buffer("_mean_t", self._per_input_channel(self.mean), persistent=False)
        self.register_buffer("_std_t", self._per_input_channel(self.std), persistent=False)
        self._aux: torch.Tensor | None = None
        self._grey: torch.Tensor | None = None

    def _per_input_channel(self, values: tuple[float, ...]) -> torch.Tensor:
        # A grey-input model keeps the RGB statistics in its config; its single channel uses the first.
        vals = values if len(values) == self.in_channels else values[:1] * self.in_channels
        return torch.tensor(vals, dtype=torch.float32).view(1, -1, 1, 1)

    def grey_target(self, x: torch.Tensor) -> torch.Tensor:
        """The grey image the second decoder reconstructs: x (N, in_channels, H, W) normalised -> (N, 1, H, W)
        in [0, 1] (BT.601 luma for RGB, the channel mean otherwise)."""
        rgb = (x.float() * self._std_t + self._mean_t).clamp(0, 1)
        if self.in_channels == 3:
            return (rgb * rgb.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return rgb.mean(1, keepdim=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        features, y = [], x
        for i, block in enumerate(self.encoder):
            y = block(F.max_pool2d(y, 2) if i > 0 else y)
            features.append(y)
        return features

    def _decode_both(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the mask logits and the grey reconstruction (N, 1, h, w), both at the first block's resolution."""
        skips = features[:-1][::-1]
        m = g = features[-1]
        for skip, mask_block, grey_block, att in zip(skips, self.mask_decoder, self.grey_decoder, self.attention):
            g = grey_block(g, skip)
            m = mask_block(m, skip) * att(g)
        return self.head(m), self.grey_head(g)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        logits, grey = self._decode_both(features)
        self._grey = grey if self.training else None  # for this forward's reconstruction loss
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W).

        In training mode the reconstruction loss of this batch is kept for :meth:`auxiliary_loss`.
        """
        logits = super().forward(x)
        if self.training:
            target = self.grey_target(x).detach()
            self._aux = self.reconstruction_weight * F.mse_loss(self._grey.float(), target)
        else:
            self._aux = None
        self._grey = None
        return logits

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The second decoder's grey reconstruction of x: (N, in_channels, H, W) -> (N, 1, H, W) in [0, 1]."""
        return self._decode_both(self.encode(x))[1]

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Weighted MSE between the reconstruction and the grey input of the last training forward; None after an
        evaluation forward."""
        return self._aux
