"""PraNet (Fan et al., MICCAI 2020): parallel partial decoder + reverse attention, on a timm encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct, pick_stages
from .registry import register_model

__all__ = ["RFB", "PartialDecoder", "PraNet", "ReverseAttention", "reverse_attention_weights"]


def _up(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


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


class PartialDecoder(nn.Module):
    """PraNet's parallel partial decoder (from CPD, Wu et al. 2019) on the three deepest RFB outputs: features
    are multiplied down the pyramid and concatenated upwards, giving a coarse global map at stride 8.

    Shapes: f5 (N, C, H/32), f4 (N, C, H/16), f3 (N, C, H/8) -> logits (N, num_classes, H/8, W/8).
    """

    def __init__(self, channels: int, num_classes: int = 1) -> None:
        super().__init__()
        c = channels
        self.up5_to4 = ConvBNAct(c, c, 3, act_layer="identity")
        self.up5_to3 = ConvBNAct(c, c, 3, act_layer="identity")
        self.up4_to3 = ConvBNAct(c, c, 3, act_layer="identity")
        self.up5_cat = ConvBNAct(c, c, 3, act_layer="identity")
        self.up4_cat = ConvBNAct(2 * c, 2 * c, 3, act_layer="identity")
        self.fuse4 = ConvBNAct(2 * c, 2 * c, 3, act_layer="identity")
        self.fuse3 = ConvBNAct(3 * c, 3 * c, 3, act_layer="identity")
        self.conv = ConvBNAct(3 * c, 3 * c, 3, act_layer="identity")
        self.head = nn.Conv2d(3 * c, num_classes, 1)

    def forward(self, f5: torch.Tensor, f4: torch.Tensor, f3: torch.Tensor) -> torch.Tensor:
        # Multiplying by the upsampled deeper features keeps only what every level agrees on.
        x4 = self.up5_to4(_up(f5, f4)) * f4
        x3 = self.up5_to3(_up(f5, f3)) * self.up4_to3(_up(f4, f3)) * f3
        x4 = self.fuse4(torch.cat([x4, self.up5_cat(_up(f5, f4))], dim=1))
        x3 = self.fuse3(torch.cat([x3, self.up4_cat(_up(x4, f3))], dim=1))
        return self.head(self.conv(x3))


@register_model("pranet")
class PraNet(SegModel):
    """PraNet: RFBs on the stride-8/16/32 encoder features, a partial decoder for a coarse global map, then
    reverse attention from the deepest stage to stride 8, each stage refining the previous prediction.

    ``forward`` returns the stride-8 refined map resized to the input; in training mode it returns all four side
    outputs, main first: [RA stride 8, RA stride 16, RA stride 32, partial decoder], which PraNet trains with the
    structure loss on each (``build_loss("structure", ...)``).

    Args:
        encoder: timm model name; the paper uses Res2Net-50 (``res2net50_26w_4s``, ImageNet weights from the Hub
            only). ``tf_efficientnet_lite0/1/2`` have ImageNet weights offline.
        rfb_channels: width of the RFB outputs and of the partial decoder (32 in the paper).
        ra_channels: widths of the reverse-attention branches at stride 32, 16, 8 (256, 64, 64 in the paper).
            With more than one class, reverse attention uses the background probability.
        encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`).
    """

    info = ModelInfo(
        paper="Fan et al., PraNet: Parallel Reverse Attention Network for Polyp Segmentation, MICCAI 2020",
        default_encoder="res2net50_26w_4s",
    )

    def __init__(
        self,
        encoder: str = "res2net50_26w_4s",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        rfb_channels: int = 32,
        ra_channels: Sequence[int] = (256, 64, 64),
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights)
        if len(ra_channels) != 3:
            raise ValueError(f"ra_channels needs 3 widths (strides 32, 16, 8), got {list(ra_channels)}")
        self.stages = pick_stages(self.encoder.feature_info.reduction(), (8, 16, 32))
        c3, c4, c5 = (self.encoder.feature_info.channels()[i] for i in self.stages)
        self.rfb3, self.rfb4, self.rfb5 = RFB(c3, rfb_channels), RFB(c4, rfb_channels), RFB(c5, rfb_channels)
        self.decoder = PartialDecoder(rfb_channels, num_classes)
        # The deepest branch uses 5x5 convs as in the paper; the shallower ones 3x3.
        self.ra5 = ReverseAttention(c5, ra_channels[0], num_classes, depth=3, kernel_size=5)
        self.ra4 = ReverseAttention(c4, ra_channels[1], num_classes, depth=2, kernel_size=3)
        self.ra3 = ReverseAttention(c3, ra_channels[2], num_classes, depth=2, kernel_size=3)

    def decode(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        f3, f4, f5 = (features[i] for i in self.stages)
        global_map = self.decoder(self.rfb5(f5), self.rfb4(f4), self.rfb3(f3))
        s5 = self.ra5(f5, global_map)
        s4 = self.ra4(f4, s5)
        s3 = self.ra3(f3, s4)
        return [s3, s4, s5, global_map]
