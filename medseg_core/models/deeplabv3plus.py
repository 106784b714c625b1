"""DeepLabV3+ (Chen et al., ECCV 2018): a dilated encoder with ASPP, plus a light decoder that adds back the
stride-4 low-level features for sharper boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ASPP, ConvBNAct
from .registry import register_model

__all__ = ["DeepLabV3Plus"]

#: The paper's atrous rates: (6, 12, 18) at output stride 16, doubled at output stride 8.
_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


@register_model("deeplabv3plus")
class DeepLabV3Plus(SegModel):
    """DeepLabV3+ on a timm encoder (``resnet50``, ``regnetx_320``, ``tf_efficientnet_lite0/1/2`` ...).

    Args:
        output_stride: 16 or 8: the encoder's last stages are dilated so ASPP sees the input at 1/16 or 1/8.
        atrous_rates: ASPP dilations; None for the paper's (6, 12, 18) at stride 16, (12, 24, 36) at stride 8.
        aspp_channels: width of ASPP and of the decoder's 3x3 convs (256 in the paper).
        low_level_channels: the stride-4 skip is reduced to this many channels (48 in the paper).
        encoder, encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`); an encoder without offline ImageNet weights starts from random
            ones (with a warning) when the Hub is unreachable.
    """

    info = ModelInfo(
        paper="Chen et al., Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation, "
        "ECCV 2018",
        default_encoder="resnet50",
    )

    def __init__(
        self,
        encoder: str = "resnet50",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if output_stride not in _RATES:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights, output_stride=output_stride)
        self.output_stride = output_stride
        channels = self.encoder.feature_info.channels()
        reductions = self.encoder.feature_info.reduction()
        if 4 not in reductions:
            raise ValueError(f"encoder {encoder!r} has no stride-4 feature for the low-level skip ({reductions})")
        self.low_index = reductions.index(4)
        self.aspp = ASPP(channels[-1], aspp_channels, rates=atrous_rates or _RATES[output_stride])
        self.low_level = ConvBNAct(channels[self.low_index], low_level_channels, 1)
        self.decoder = nn.Sequential(
            ConvBNAct(aspp_channels + low_level_channels, aspp_channels, 3),
            ConvBNAct(aspp_channels, aspp_channels, 3),
        )
        self.head = nn.Conv2d(aspp_channels, num_classes, kernel_size=1)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(features[self.low_index])
        y = self.aspp(features[-1])
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.decoder(torch.cat([y, low], dim=1)))
