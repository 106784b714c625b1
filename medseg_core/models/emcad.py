"""EMCAD (Rahman et al., CVPR 2024): efficient multi-scale convolutional attention decoding on a PVTv2 encoder."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct, pick_stages
from .registry import register_model

__all__ = [
    "EMCAD",
    "EUCB",
    "LGAG",
    "MSCAM",
    "MSCB",
    "ChannelAttentionBlock",
    "SpatialAttentionBlock",
    "channel_shuffle",
]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet), so grouped/depthwise outputs mix in the next
    pointwise conv. Shapes: (N, C, H, W) -> (N, C, H, W)."""
    n, c, h, w = x.shape
    if groups <= 1 or c % groups:
        return x
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MSCB(nn.Module):
    """Multi-scale convolution block (EMCAD): 1x1 expansion -> parallel depthwise convs of several kernel sizes,
    summed -> channel shuffle -> 1x1 projection (BN, no activation) + shortcut.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H, W).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion: int = 2,
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = ConvBNAct(in_ch, hidden, 1, act_layer=act_layer)
        self.dw = nn.ModuleList(ConvBNAct(hidden, hidden, k, groups=hidden, act_layer=act_layer) for k in kernel_sizes)
        self.shuffle_groups = math.gcd(hidden, out_ch)
        self.project = nn.Sequential(nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x)
        h = torch.stack([dw(h) for dw in self.dw]).sum(0)
        return self.shortcut(x) + self.project(channel_shuffle(h, self.shuffle_groups))


class ChannelAttentionBlock(nn.Module):
    """CBAM-style channel attention (EMCAD's CAB): a shared bottleneck MLP on the average- and max-pooled
    features, summed, sigmoid. Shapes: (N, C, H, W) -> weights (N, C, 1, 1) in [0, 1]."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))


class SpatialAttentionBlock(nn.Module):
    """CBAM-style spatial attention (EMCAD's SAB): a kxk conv over the channel mean and max, sigmoid.
    Shapes: (N, C, H, W) -> weights (N, 1, H, W) in [0, 1]."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))


class MSCAM(nn.Module):
    """Multi-scale convolutional attention module (EMCAD): channel attention, then spatial attention, then an
    MSCB. Shapes: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(
        self, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5), expansion: int = 2, reduction: int = 16
    ) -> None:
        super().__init__()
        self.cab = ChannelAttentionBlock(channels, reduction)
        self.sab = SpatialAttentionBlock()
        self.mscb = MSCB(channels, channels, kernel_sizes, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cab(x) * x
        x = self.sab(x) * x
        return self.mscb(x)


class LGAG(nn.Module):
    """Large-kernel grouped attention gate (EMCAD): the gating signal ``g`` (decoder) and the skip ``x`` each go
    through a grouped kxk conv + BN; ReLU of the sum -> 1x1 conv -> BN -> sigmoid gives one weight per pixel
    that scales the skip.

    Shapes: g (N, g_ch, H, W), x (N, x_ch, H, W) -> gated x (N, x_ch, H, W).
    """

    def __init__(self, g_ch: int, x_ch: int, inter_ch: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        inter_ch = inter_ch or max(1, x_ch // 2)
        # EMCAD uses inter_ch groups; gcd keeps that where the widths allow it and stays valid where they don't.
        groups = 1 if kernel_size == 1 else math.gcd(math.gcd(g_ch, x_ch), inter_ch)
        pad = kernel_size // 2
        self.w_g = nn.Sequential(
            nn.Conv2d(g_ch, inter_ch, kernel_size, padding=pad, groups=groups), nn.BatchNorm2d(inter_ch)
        )
        self.w_x = nn.Sequential(
            nn.Conv2d(x_ch, inter_ch, kernel_size, padding=pad, groups=groups), nn.BatchNorm2d(inter_ch)
        )
        self.psi = nn.Sequential(nn.Conv2d(inter_ch, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def gate(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention weights, (N, 1, H, W) in [0, 1]."""
        return self.psi(F.relu(self.w_g(g) + self.w_x(x)))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(g, x)


class EUCB(nn.Module):
    """Efficient up-convolution block (EMCAD): nearest upsampling -> depthwise 3x3 conv -> BN -> ReLU -> 1x1 conv.

    EMCAD's reference shuffles channels with as many groups as channels, which leaves them in place, so no
    shuffle here. Shapes: (N, in_ch, h, w) -> (N, out_ch, H, W), (H, W) = ``size`` or (2h, 2w).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, kernel_size, groups=in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest")
        return self.pw(self.dw(x))


@register_model("emcad")
class EMCAD(SegModel):
    """EMCAD: the deepest feature (stride 32) goes through an MSCAM; each shallower stage upsamples the decoder
    state with an EUCB, gates its skip with an LGAG driven by that state, adds the two and applies an MSCAM.
    Decoder widths equal the encoder's, as in the paper. A 1x1 head predicts from each of the four stages.

    ``forward`` returns the stride-4 prediction resized to the input; in training mode it returns all four, main
    (stride 4) first, then strides 8, 16, 32 (train them with ``DeepSupervisionLoss``).

    Args:
        encoder: ``pvt_v2_b0`` (EMCAD-B0) or ``pvt_v2_b2`` (EMCAD-B2), ImageNet weights from the Hub only; any timm
            encoder with outputs at strides 4..32 works, e.g. ``tf_efficientnet_lite0`` (ImageNet weights offline).
        kernel_sizes: depthwise kernels of the multi-scale conv blocks.
        expansion: MSCB expansion factor (2 in the paper's networks).
        lgag_kernel_size: kernel of the attention gates' grouped convs.
        encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`).
    """

    info = ModelInfo(
        paper="Rahman et al., EMCAD: Efficient Multi-scale Convolutional Attention Decoding for Medical Image "
        "Segmentation, CVPR 2024",
        default_encoder="pvt_v2_b0",
    )

    def __init__(
        self,
        encoder: str = "pvt_v2_b0",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion: int = 2,
        lgag_kernel_size: int = 3,
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights)
        # Deep to shallow: strides 32, 16, 8, 4.
        self.stages = pick_stages(self.encoder.feature_info.reduction(), (32, 16, 8, 4))
        channels = [self.encoder.feature_info.channels()[i] for i in self.stages]
        kernel_sizes = tuple(kernel_sizes)
        self.mscam = nn.ModuleList(MSCAM(c, kernel_sizes, expansion) for c in channels)
        self.up = nn.ModuleList(EUCB(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.gates = nn.ModuleList(LGAG(c, c, c // 2, lgag_kernel_size) for c in channels[1:])
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def decode(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        skips = [features[i] for i in self.stages]
        d = self.mscam[0](skips[0])
        outputs = [self.heads[0](d)]
        for up, gate, mscam, head, skip in zip(self.up, self.gates, self.mscam[1:], self.heads[1:], skips[1:]):
            d = up(d, size=skip.shape[-2:])
            d = mscam(d + gate(g=d, x=skip))
            outputs.append(head(d))
        return outputs[::-1]  # stride 4 (the main output) first
