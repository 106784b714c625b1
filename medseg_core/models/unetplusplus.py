"""UNet++ (Zhou et al., DLMIA 2018): nested, densely connected skip pathways with deep supervision.

Node ``X[i][j]`` (depth ``i``, column ``j``) sees every earlier node at its depth, ``X[i][0..j-1]``, and the
upsampled node below it, ``X[i+1][j-1]``; ``X[i][0]`` are the encoder features. The top row ``X[0][1..]`` gives
one prediction per column: all of them are supervised in training, the last one is the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .base import ModelInfo, SegModel
from .registry import register_model
from .unet import UNetDecoderBlock

__all__ = ["UNetPlusPlus"]


@register_model("unetplusplus")
class UNetPlusPlus(SegModel):
    """UNet++ on a timm encoder.

    Args:
        decoder_channels: node widths deep to shallow, one per skip depth (the width of row ``i`` is
            ``decoder_channels[-2 - i]`` for five encoder stages), plus optionally one more for a last block that
            upsamples the top row to the input's resolution.
        deep_supervision: in training mode, return every top-row prediction (main output first).
        encoder, encoder_weights, in_channels, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`).

    ``forward`` returns logits (N, num_classes, H, W); in training mode with ``deep_supervision`` a list: the main
    logits, then ``X[0][L-2]`` ... ``X[0][1]`` at the top row's resolution.
    """

    info = ModelInfo(
        paper="Zhou et al., UNet++: A Nested U-Net Architecture for Medical Image Segmentation, DLMIA 2018",
        default_encoder="tf_efficientnet_lite0",
    )

    def __init__(
        self,
        encoder: str = "tf_efficientnet_lite0",
        encoder_weights: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        deep_supervision: bool = True,
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels, encoder=encoder,
                         encoder_weights=encoder_weights)
        self.deep_supervision = bool(deep_supervision)
        channels = self.encoder.feature_info.channels()
        depth = len(channels)
        if len(decoder_channels) < depth - 1:
            raise ValueError(f"decoder_channels needs at least {depth - 1} widths for {encoder}")
        widths = [decoder_channels[depth - 2 - i] for i in range(depth - 1)]
        self.depth = depth
        # nodes["i_j"] computes X[i][j] from X[i][0..j-1] (dense skips) and X[i+1][j-1] (upsampled).
        nodes = {}
        for j in range(1, depth):
            for i in range(depth - j):
                below = channels[i + 1] if j == 1 else widths[i + 1]
                dense = channels[i] + (j - 1) * widths[i]
                nodes[f"{i}_{j}"] = UNetDecoderBlock(below, dense, widths[i])
        self.nodes = nn.ModuleDict(nodes)
        top = widths[0]
        if len(decoder_channels) >= depth:
            self.final = UNetDecoderBlock(top, 0, decoder_channels[depth - 1])
            head_ch = decoder_channels[depth - 1]
        else:
            self.final, head_ch = None, top
        self.head = nn.Conv2d(head_ch, num_classes, kernel_size=3, padding=1)
        self.aux_heads = nn.ModuleList(nn.Conv2d(top, num_classes, kernel_size=1) for _ in range(depth - 2))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        grid: list[list[torch.Tensor]] = [[f] for f in features]
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                grid[i].append(self.nodes[f"{i}_{j}"](grid[i + 1][j - 1], torch.cat(grid[i][:j], dim=1)))
        top = grid[0][-1]
        main = self.head(self.final(top) if self.final is not None else top)
        if not self.wants_side_outputs:
            return main
        # Columns 1 .. depth-2 of the top row, most refined first, so DeepSupervisionLoss weights them highest.
        aux = [head(grid[0][j]) for j, head in zip(range(self.depth - 2, 0, -1), self.aux_heads)]
        return [main, *aux]
