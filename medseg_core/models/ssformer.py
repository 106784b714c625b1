"""SSFormer (Wang et al., MICCAI 2022, "Stepwise Feature Fusion: Local Guides Global"): a pyramid transformer
encoder (PVTv2) with the Progressive Locality Decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct, pick_stages
from .registry import register_model

__all__ = ["LocalEmphasis", "SSFormer"]


class LocalEmphasis(nn.Module):
    """SSFormer's Local Emphasis (LE): two 3x3 convs with ReLU give each transformer feature a local receptive
    field (attention alone disperses), then bilinear upsampling to the stride-4 grid.

    Shapes: (N, in_ch, h, w) -> (N, out_ch, H, W) with (H, W) = ``size``.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.convs(x), size=size, mode="bilinear", align_corners=False)


@register_model("ssformer")
class SSFormer(SegModel):
    """SSFormer: PVTv2 features at strides 4, 8, 16, 32 -> Local Emphasis on each -> Stepwise Feature Aggregation
    (deepest and next concatenated and fused by a 1x1 conv + BN + ReLU, the result with the next shallower, ...)
    -> dropout -> 1x1 prediction at stride 4, resized to the input.

    Args:
        encoder: ``pvt_v2_b2`` gives SSFormer-S, ``pvt_v2_b4`` SSFormer-L (both ImageNet weights from the Hub only);
            any timm encoder with outputs at strides 4..32 works, e.g. ``tf_efficientnet_lite0`` (ImageNet weights
            offline; its stride-2 output is not used).
        decoder_channels: width of every LE output and fusion.
        dropout: before the prediction conv.
        encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`).
    """

    info = ModelInfo(
        paper="Wang et al., Stepwise Feature Fusion: Local Guides Global (SSFormer), MICCAI 2022",
        default_encoder="pvt_v2_b2",
    )

    def __init__(
        self,
        encoder: str = "pvt_v2_b2",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        decoder_channels: int = 256,
        dropout: float = 0.1,
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights)
        self.stages = pick_stages(self.encoder.feature_info.reduction(), (4, 8, 16, 32))
        channels = [self.encoder.feature_info.channels()[i] for i in self.stages]
        self.local_emphasis = nn.ModuleList(LocalEmphasis(c, decoder_channels) for c in channels)
        # One fusion per step, deepest pair first: (1/32 + 1/16), (+ 1/8), (+ 1/4).
        self.fuse = nn.ModuleList(ConvBNAct(2 * decoder_channels, decoder_channels, 1) for _ in channels[1:])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv2d(decoder_channels, num_classes, 1)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        features = [features[i] for i in self.stages]
        size = features[0].shape[-2:]
        local = [le(f, size) for le, f in zip(self.local_emphasis, features)]
        y = local[-1]
        for fuse, shallower in zip(self.fuse, reversed(local[:-1])):
            y = fuse(torch.cat([y, shallower], dim=1))
        return self.head(self.dropout(y))
