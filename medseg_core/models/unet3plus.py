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
from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .layers import ConvBNAct
from .registry import register_model

__all__ = ["UNet3Plus", "gate_logits"]


def gate_logits(logits: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Scale the foreground probabilities of ``logits`` by P(lesion present) and return logits of the result.

    The paper multiplies its sigmoid maps by the CGM's argmax (0 or 1). Our losses see only the segmentation
    outputs, so the gate is the product of probabilities instead: the segmentation loss trains the classifier
    through it, and an image the classifier calls empty gets (almost) no foreground.

    Args:
        logits: (N, C, H, W) segmentation logits; C = 1 means sigmoid, C > 1 softmax with class 0 background.
        presence: (N, 1, 1, 1) logit of "the image contains a lesion".

    Returns:
        (N, C, H, W) logits whose sigmoid / softmax equals the gated probabilities.
    """
    log_present = F.logsigmoid(presence.float())
    if logits.shape[1] == 1:
        log_fg = F.logsigmoid(logits.float()) + log_present
        return log_fg - torch.log(-torch.expm1(log_fg.clamp(max=-1e-7)))
    log_probs = F.log_softmax(logits.float(), dim=1)
    log_fg = log_probs[:, 1:] + log_present
    log_any = torch.logsumexp(log_fg, dim=1, keepdim=True).clamp(max=-1e-7)
    # Log-probabilities that sum to one are valid softmax logits: softmax(log p) = p.
    return torch.cat([torch.log(-torch.expm1(log_any)), log_fg], dim=1)


@register_model("unet3plus")
class UNet3Plus(SegModel):
    """UNet 3+ on a timm encoder, sized from ``feature_info``.

    Args:
        encoder: timm model name; ``tf_efficientnet_lite0/1/2`` have ImageNet weights offline.
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        in_channels: input image channels.
        num_classes: 1 for binary (sigmoid), C for softmax over C classes.
        cat_channels: width of each full-scale input of a decoder level (64 in the paper); a decoder level is
            ``cat_channels * number of encoder stages`` wide.
        deep_supervision: in training mode, return a prediction from every decoder level and from the bottom.
        cgm: add the classification-guided module, which gates every prediction by P(lesion present).
        input_size, mean, std: preprocessing; mean/std default to the encoder's.

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
        enc_mean, enc_std = encoder_normalization(encoder)
        super().__init__(num_classes, input_size, mean or enc_mean, std or enc_std, in_channels)
        self.deep_supervision, self.cgm = bool(deep_supervision), bool(cgm)
        self.encoder = create_encoder(encoder, pretrained=wants_imagenet(encoder_weights), in_chans=in_channels)
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
        self.classifier = (
            nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels[-1], 1, 1), nn.AdaptiveMaxPool2d(1)) if cgm else None
        )

    def _decode(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W), or a list in training (see the class)."""
        feats = self.encoder(x)
        levels = self._decode(feats)
        outputs = [self._resize_to(self.head(levels[0]), x)]
        if self.training and self.deep_supervision:
            outputs += [head(level) for head, level in zip(self.aux_heads, levels[1:])]
        if self.classifier is not None:
            presence = self.classifier(feats[-1])
            outputs = [gate_logits(out, presence) for out in outputs]
        return outputs if self.training and self.deep_supervision else outputs[0]
