"""PraNet (Fan et al., MICCAI 2020): parallel partial decoder + reverse attention, on a timm encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .layers import RFB, ConvBNAct, ReverseAttention, pick_stages
from .registry import register_model

__all__ = ["PartialDecoder", "PraNet"]


def _up(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


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
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        in_channels: input image channels.
        num_classes: 1 for binary (sigmoid), C for softmax over C classes (reverse attention then uses the
            background probability).
        rfb_channels: width of the RFB outputs and of the partial decoder (32 in the paper).
        ra_channels: widths of the reverse-attention branches at stride 32, 16, 8 (256, 64, 64 in the paper).
        input_size, mean, std: preprocessing; mean/std default to the encoder's.
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
        enc_mean, enc_std = encoder_normalization(encoder)
        super().__init__(num_classes, input_size, mean or enc_mean, std or enc_std, in_channels)
        if len(ra_channels) != 3:
            raise ValueError(f"ra_channels needs 3 widths (strides 32, 16, 8), got {list(ra_channels)}")
        self.encoder = create_encoder(encoder, pretrained=wants_imagenet(encoder_weights), in_chans=in_channels)
        self.stages = pick_stages(self.encoder.feature_info.reduction(), (8, 16, 32))
        c3, c4, c5 = (self.encoder.feature_info.channels()[i] for i in self.stages)
        self.rfb3, self.rfb4, self.rfb5 = RFB(c3, rfb_channels), RFB(c4, rfb_channels), RFB(c5, rfb_channels)
        self.decoder = PartialDecoder(rfb_channels, num_classes)
        # The deepest branch uses 5x5 convs as in the paper; the shallower ones 3x3.
        self.ra5 = ReverseAttention(c5, ra_channels[0], num_classes, depth=3, kernel_size=5)
        self.ra4 = ReverseAttention(c4, ra_channels[1], num_classes, depth=2, kernel_size=3)
        self.ra3 = ReverseAttention(c3, ra_channels[2], num_classes, depth=2, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W); in training a list, main output first."""
        feats = self.encoder(x)
        f3, f4, f5 = (feats[i] for i in self.stages)
        global_map = self.decoder(self.rfb5(f5), self.rfb4(f4), self.rfb3(f3))
        s5 = self.ra5(f5, global_map)
        s4 = self.ra4(f4, s5)
        s3 = self.ra3(f3, s4)
        main = self._resize_to(s3, x)
        if self.training:
            return [main, s4, s5, global_map]
        return main
