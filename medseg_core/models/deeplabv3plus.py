"""DeepLabV3+ (Chen et al., ECCV 2018): a dilated encoder with ASPP, plus a light decoder that adds back the
stride-4 low-level features for sharper boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .layers import ASPP, ConvBNAct
from .registry import register_model

__all__ = ["DeepLabV3Plus"]

#: The paper's atrous rates: (6, 12, 18) at output stride 16, doubled at output stride 8.
_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def _dilated_encoder(name: str, pretrained: bool, in_chans: int, output_stride: int) -> nn.Module:
    """A ``create_encoder`` feature extractor whose last stages are dilated to reach ``output_stride``.

    timm builds the dilated network (``output_stride`` kwarg); dilation changes no weight shape, so the ImageNet
    weights ``create_encoder`` found (offline for EfficientNet-Lite) load into it unchanged.
    """
    if output_stride == 32:
        return create_encoder(name, pretrained=pretrained, in_chans=in_chans)
    try:
        dilated = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans,
                                    output_stride=output_stride)
    except TypeError as err:  # timm passes unknown kwargs to the model class, which rejects them
        raise ValueError(f"encoder {name!r} does not support output_stride={output_stride}") from err
    if pretrained:
        dilated.load_state_dict(create_encoder(name, pretrained=True, in_chans=in_chans).state_dict(), strict=True)
    return dilated


@register_model("deeplabv3plus")
class DeepLabV3Plus(SegModel):
    """DeepLabV3+ on a timm encoder (``resnet50``, ``regnetx_320``, ``tf_efficientnet_lite0/1/2`` ...).

    Args:
        encoder: timm model name. Only EfficientNet-Lite has ImageNet weights offline; the others start from
            random weights (with a warning) when the Hub is unreachable.
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        in_channels: input image channels.
        num_classes: 1 for binary (sigmoid), C for softmax over C classes.
        output_stride: 16 or 8: the encoder's last stages are dilated so ASPP sees the input at 1/16 or 1/8.
        atrous_rates: ASPP dilations; None for the paper's (6, 12, 18) at stride 16, (12, 24, 36) at stride 8.
        aspp_channels: width of ASPP and of the decoder's 3x3 convs (256 in the paper).
        low_level_channels: the stride-4 skip is reduced to this many channels (48 in the paper).
        input_size, mean, std: preprocessing; mean/std default to the encoder's.
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
        enc_mean, enc_std = encoder_normalization(encoder)
        super().__init__(num_classes, input_size, mean or enc_mean, std or enc_std, in_channels)
        self.output_stride = output_stride
        self.encoder = _dilated_encoder(encoder, wants_imagenet(encoder_weights), in_channels, output_stride)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        feats = self.encoder(x)
        low = self.low_level(feats[self.low_index])
        y = self.aspp(feats[-1])
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, low], dim=1))
        return self._resize_to(self.head(y), x)
