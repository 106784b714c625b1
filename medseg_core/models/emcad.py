"""EMCAD (Rahman et al., CVPR 2024): efficient multi-scale convolutional attention decoding on a PVTv2 encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .base import ModelInfo, SegModel
from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .layers import EUCB, LGAG, MSCAM, pick_stages
from .registry import register_model

__all__ = ["EMCAD"]


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
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        in_channels: input image channels.
        num_classes: 1 for binary (sigmoid), C for softmax over C classes.
        kernel_sizes: depthwise kernels of the multi-scale conv blocks.
        expansion: MSCB expansion factor (2 in the paper's networks).
        lgag_kernel_size: kernel of the attention gates' grouped convs.
        input_size, mean, std: preprocessing; mean/std default to the encoder's.
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
        enc_mean, enc_std = encoder_normalization(encoder)
        super().__init__(num_classes, input_size, mean or enc_mean, std or enc_std, in_channels)
        self.encoder = create_encoder(encoder, pretrained=wants_imagenet(encoder_weights), in_chans=in_channels)
        # Deep to shallow: strides 32, 16, 8, 4.
        self.stages = pick_stages(self.encoder.feature_info.reduction(), (32, 16, 8, 4))
        channels = [self.encoder.feature_info.channels()[i] for i in self.stages]
        kernel_sizes = tuple(kernel_sizes)
        self.mscam = nn.ModuleList(MSCAM(c, kernel_sizes, expansion) for c in channels)
        self.up = nn.ModuleList(EUCB(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.gates = nn.ModuleList(LGAG(c, c, c // 2, lgag_kernel_size) for c in channels[1:])
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W); in training a list, main output first."""
        feats = self.encoder(x)
        skips = [feats[i] for i in self.stages]
        d = self.mscam[0](skips[0])
        outputs = [self.heads[0](d)]
        for up, gate, mscam, head, skip in zip(self.up, self.gates, self.mscam[1:], self.heads[1:], skips[1:]):
            d = up(d, size=skip.shape[-2:])
            d = mscam(d + gate(g=d, x=skip))
            outputs.append(head(d))
        main = self._resize_to(outputs[-1], x)
        if self.training:
            return [main, *outputs[-2::-1]]
        return main
