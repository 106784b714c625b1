"""UNet 3+ (Huang et al., ICASSP 2020): full-scale skip connections, full-scale deep supervision and an optional
classification-guided module (CGM).

Every decoder level ``D_i`` fuses all scales: shallower encoder features max-pooled down, the encoder feature of
its own level, and every deeper decoder output (and the bottom encoder feature) upsampled; each input is first
reduced to ``cat_channels`` by a 3x3 conv, the concatenation is fused by one more 3x3 conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelInfo, SegModel
from .layers import ConvBNAct, gate_logits
from .registry import register_model

__all__ = ["UNet3Plus", "gate_logits"]


@register_model("unet3plus")
class UNet3Plus(SegModel):
    """UNet 3+ on a timm encoder, sized from ``feature_info``.

    Args:
        cat_channels: width of each full-scale input of a decoder level (64 in the paper); a decoder level is
            ``cat_channels * number of encoder stages`` wide.
        deep_supervision: in training mode, return a prediction from every decoder level and from the bottom.
        cgm: add the classification-guided module, which gates every prediction by P(lesion present)
            (:func:`~medseg_core.models.layers.gate_logits`).
        encoder, encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`).

    ``forward`` returns logits (N, num_classes, H, W); in training mode with ``deep_supervision`` a list: the main
    logits, then the predictions of the deeper decoder levels and of the bottom encoder stage, at their own scales.
    """

    info = ModelInfo(
        paper="Huang et al., UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation, ICASSP 2020",
        default_encoder="tf_efficientnet_lite0",
    )

    def __init__(
        self,
        encoder: str = "tf_efficientnet_lite0",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        cat_channels: int = 64,
        deep_supervision: bool = True,
        cgm: bool = False,
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights)
        self.deep_supervision, self.cgm = bool(deep_supervision), bool(cgm)
        channels = self.encoder.feature_info.channels()
        self.depth = depth = len(channels)
        fused = cat_channels * depth
        # branches[i][k] brings scale k to decoder level i; levels run 0 (shallowest) .. depth - 2.
        self.branches = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(depth - 1):
            ins = [channels[k] if k <= i or k == depth - 1 else fused for k in range(depth)]
            self.branches.append(nn.ModuleList(ConvBNAct(c, cat_channels) for c in ins))
            self.fuse.append(ConvBNAct(fused, fused))
        self.head = nn.Conv2d(fused, num_classes, kernel_size=3, padding=1)
        # Deep supervision: one head per deeper decoder level, and one on the bottom encoder stage.
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(fused if i < depth - 1 else channels[-1], num_classes, kernel_size=3, padding=1)
            for i in range(1, depth)
        )
        if cgm:  # the presence head; SegModel.forward gates every output with it
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels[-1], 1, 1), nn.AdaptiveMaxPool2d(1))

    def _levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder outputs ``[D_0, ..., D_{depth-2}, E_{depth-1}]``, computed deep to shallow."""
        levels: list[torch.Tensor | None] = [None] * (self.depth - 1) + [feats[-1]]
        for i in range(self.depth - 2, -1, -1):
            size = feats[i].shape[-2:]
            parts = []
            for k, branch in enumerate(self.branches[i]):
                if k < i:
                    src = F.adaptive_max_pool2d(feats[k], size)
                elif k == i:
                    src = feats[i]
                else:
                    src = F.interpolate(levels[k], size=size, mode="bilinear", align_corners=False)
                parts.append(branch(src))
            levels[i] = self.fuse[i](torch.cat(parts, dim=1))
        return levels

    def decode(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = self._levels(features)
        outputs = [self.head(levels[0])]
        if self.wants_side_outputs:
            outputs += [head(level) for head, level in zip(self.aux_heads, levels[1:])]
        return outputs
