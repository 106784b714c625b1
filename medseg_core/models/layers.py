"""Blocks shared by the architectures. ``act_layer`` / ``norm_layer`` may be a class or a name."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

__all__ = [
    "ASPP",
    "AttentionGate",
    "ConvBNAct",
    "ResidualBlock",
    "SEBlock",
    "get_act",
    "get_norm",
    # model zoo (b)
    "EUCB",
    "LGAG",
    "MSCAM",
    "MSCB",
    "RFB",
    "ChannelAttentionBlock",
    "ConvAttention",
    "ReverseAttention",
    "SpatialAttentionBlock",
    "WideFocus",
    "channel_shuffle",
    "pick_stages",
    "reverse_attention_weights",
    # dynasiam
    "DynamicFeatureInteraction",
]

_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "identity": nn.Identity}
_NORMS: dict[str, type[nn.Module]] = {"batchnorm": nn.BatchNorm2d, "instancenorm": nn.InstanceNorm2d}


def get_act(act: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(act, str):
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; choose from {sorted(_ACTS)}")
        return _ACTS[act]
    return act


def get_norm(norm: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose from {sorted(_NORMS)}")
        return _NORMS[norm]
    return norm


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> norm -> activation; 'same' padding for odd kernels."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: str | type[nn.Module] = "batchnorm",
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        act = get_act(act_layer)
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            get_norm(norm_layer)(out_ch),
            act(inplace=True) if act in (nn.ReLU, nn.SiLU) else act(),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3, Chen et al. 2017): parallel 1x1 and dilated 3x3 convs plus
    image-level pooling, concatenated and projected.

    Args:
        in_ch, out_ch: input channels and the width of every branch and of the output.
        rates: dilation of each 3x3 branch, e.g. (6, 12, 18) at output stride 16.
        dropout: dropout after the projection.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H, W).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        norm_layer: str | type[nn.Module] = "batchnorm",
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        branches = [ConvBNAct(in_ch, out_ch, 1, norm_layer=norm_layer, act_layer=act_layer)]
        branches += [ConvBNAct(in_ch, out_ch, 3, dilation=r, norm_layer=norm_layer, act_layer=act_layer) for r in rates]
        self.branches = nn.ModuleList(branches)
        # No norm on the pooled branch: it is 1x1 spatially, so BatchNorm would fail on a batch of one in training.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), get_act(act_layer)())
        self.project = nn.Sequential(
            ConvBNAct(out_ch * (len(branches) + 1), out_ch, 1, norm_layer=norm_layer, act_layer=act_layer),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


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


# --- model zoo (b): PraNet, FCT, EMCAD blocks ---------------------------------------------------------------------


def pick_stages(reductions: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Indices of the encoder outputs at the given strides, so one decoder fits encoders with 4 stages (PVTv2:
    4..32) and with 5 (EfficientNet, ResNet: 2..32)."""
    reductions = list(reductions)
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ValueError(f"the encoder has no output at stride(s) {missing}; its strides are {reductions}")
    return [reductions.index(s) for s in strides]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet), so grouped/depthwise outputs mix in the next
    pointwise conv. Shapes: (N, C, H, W) -> (N, C, H, W)."""
    n, c, h, w = x.shape
    if groups <= 1 or c % groups:
        return x
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(in_ch: int, out_ch: int, kernel: int | tuple[int, int], dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, 'same' padding, for the non-square kernels of RFB."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, (kh, kw), padding=padding, dilation=dilation, bias=False), nn.BatchNorm2d(out_ch)
    )


class RFB(nn.Module):
    """Receptive field block as modified in PraNet (after Liu et al., ECCV 2018): a 1x1 branch and three branches
    of 1x1 -> 1xk -> kx1 -> 3x3 dilated k (k = 3, 5, 7), concatenated, fused by a 3x3 conv, plus a 1x1 shortcut.

    As in PraNet's released model, the convs inside the branches are conv + BN without an activation; the ReLU
    comes after the shortcut sum.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int = 32) -> None:
        super().__init__()
        branches = [_conv_bn(in_ch, out_ch, 1)]
        for k in (3, 5, 7):
            branches.append(
                nn.Sequential(
                    _conv_bn(in_ch, out_ch, 1),
                    _conv_bn(out_ch, out_ch, (1, k)),
                    _conv_bn(out_ch, out_ch, (k, 1)),
                    _conv_bn(out_ch, out_ch, 3, dilation=k),
                )
            )
        self.branches = nn.ModuleList(branches)
        self.fuse = _conv_bn(4 * out_ch, out_ch, 3)
        self.shortcut = _conv_bn(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fuse(torch.cat([b(x) for b in self.branches], dim=1)) + self.shortcut(x))


def reverse_attention_weights(logits: torch.Tensor) -> torch.Tensor:
    """Where a coarse prediction does *not* see lesion: 1 - sigmoid for one channel; for softmax logits the
    background probability (1 - P(any lesion class)). Shapes: (N, C, H, W) -> (N, 1, H, W) in [0, 1]."""
    if logits.shape[1] == 1:
        return 1.0 - torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, :1]


class ReverseAttention(nn.Module):
    """Reverse attention (PraNet, Fan et al. 2020): features are weighted by the complement of the coarser
    prediction, so the branch learns the missed parts and boundaries; its output is a residual on that prediction.

    Args:
        in_ch: channels of the encoder feature; mid_ch: width of the conv stack.
        num_classes: channels of the prediction refined.
        depth: convs at width ``mid_ch`` after the 1x1 reduction; kernel_size: their kernel.

    Shapes: feat (N, in_ch, H, W), coarse (N, num_classes, h, w) -> refined logits (N, num_classes, H, W).
    """

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int = 1, depth: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        layers = [ConvBNAct(in_ch, mid_ch, 1)]
        layers += [ConvBNAct(mid_ch, mid_ch, kernel_size) for _ in range(depth)]
        self.body = nn.Sequential(*layers)
        # PraNet ends its 3x3 branches with a 3x3 conv and its 5x5 branch with a 1x1.
        head_k = 3 if kernel_size == 3 else 1
        self.head = nn.Conv2d(mid_ch, num_classes, head_k, padding=head_k // 2)

    def forward(self, feat: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(coarse, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        return coarse + self.head(self.body(feat * reverse_attention_weights(coarse)))


class ConvAttention(nn.Module):
    """Multi-head self-attention whose Q/K/V come from depthwise-convolutional projections (CvT; FCT's
    convolutional attention): depthwise kxk conv -> ReLU -> LayerNorm, then the per-token linear maps.

    ``kv_stride`` > 1 squeezes keys and values (CvT) to cut the cost on large maps; FCT uses 1. Attention runs
    through ``scaled_dot_product_attention``, which avoids the (HW x HW) matrix where a fused kernel exists.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self, channels: int, num_heads: int = 1, kernel_size: int = 3, kv_stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"ConvAttention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout

        def projection(stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size, stride, kernel_size // 2, groups=channels),
                nn.ReLU(inplace=True),
                LayerNorm2d(channels),
            )

        self.proj_q, self.proj_k, self.proj_v = projection(1), projection(kv_stride), projection(kv_stride)
        self.to_q, self.to_k, self.to_v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.out = nn.Conv2d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = t.shape
        return t.reshape(n, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self._heads(self.to_q(self.proj_q(x)))
        k = self._heads(self.to_k(self.proj_k(x)))
        v = self._heads(self.to_v(self.proj_v(x)))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.out(y.transpose(-1, -2).reshape(n, c, h, w)))


class WideFocus(nn.Module):
    """FCT's Wide-Focus: parallel 3x3 convs at several dilations (GELU, dropout), summed, then a 3x3 conv;
    the transformer MLP replaced by a multi-receptive-field conv. Shapes: (N, in_ch, H, W) -> (N, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, dilations: Sequence[int] = (1, 2, 3), dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=d, dilation=d), nn.GELU(), nn.Dropout(dropout))
            for d in dilations
        )
        self.fuse = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.stack([b(x) for b in self.branches]).sum(0))


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


class DynamicFeatureInteraction(nn.Module):
    """Dynamic Feature Interaction (DFI, DynaSiam): fuse V views' feature maps with input-dependent weights.

    Each view gets a weight per channel (from the global-average-pooled features of *all* views, through a small
    MLP, so one view's weight depends on what the others show) plus a weight per pixel (a 1x1 conv on all views'
    features); the two logits add up and a softmax over the views turns them into convex weights. The last layer
    of both gates starts at zero, so an untrained block averages the views, which is also the ``dfi=False``
    ablation; training then learns where to trust which view.

    Args:
        channels: C, channels of every view's features.
        num_views: V.
        reduction: hidden width of the channel gate is ``max(8, V * C // reduction)``.
        spatial: also predict per-pixel weights.
    """

    def __init__(self, channels: int, num_views: int, reduction: int = 4, spatial: bool = True) -> None:
        super().__init__()
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.channels, self.num_views = int(channels), int(num_views)
        width = self.channels * self.num_views
        hidden = max(8, width // max(1, reduction))
        self.channel_gate = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        self.spatial_gate = nn.Conv2d(width, self.num_views, 1) if spatial else None
        nn.init.zeros_(self.channel_gate[-1].weight)
        nn.init.zeros_(self.channel_gate[-1].bias)
        if self.spatial_gate is not None:
            nn.init.zeros_(self.spatial_gate.weight)
            nn.init.zeros_(self.spatial_gate.bias)

    def view_weights(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, V, C, h, w) -> weights (N, V, C, h, w) (or (N, V, C, 1, 1) without the spatial gate),
        non-negative and summing to 1 over V."""
        n, v, c, h, w = feats.shape
        if (v, c) != (self.num_views, self.channels):
            raise ValueError(f"expected {self.num_views} views of {self.channels} channels, got {v} of {c}")
        pooled = feats.mean(dim=(3, 4)).reshape(n, v * c)
        logits = self.channel_gate(pooled).view(n, v, c, 1, 1)
        if self.spatial_gate is not None:
            logits = logits + self.spatial_gate(feats.reshape(n, v * c, h, w)).unsqueeze(2)
        return logits.softmax(dim=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, V, C, h, w) -> fused (N, C, h, w)."""
        return (self.view_weights(feats) * feats).sum(dim=1)
