"""FCT, the Fully Convolutional Transformer (Tragakis et al., WACV 2023), with its own plain encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from .base import ModelInfo, SegModel
from .registry import register_model

__all__ = ["FCT", "ConvAttention", "FCTDecoderBlock", "FCTEncoderBlock", "FCTransformer", "WideFocus"]


def _conv_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))


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


class FCTransformer(nn.Module):
    """FCT's transformer layer: convolutional attention -> 3x3 conv, residual; LayerNorm -> Wide-Focus, residual.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 1, kv_stride: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.attention = ConvAttention(channels, num_heads, kv_stride=kv_stride)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = LayerNorm2d(channels)
        self.wide_focus = WideFocus(channels, channels, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv(self.attention(x))
        return x + self.wide_focus(self.norm(x))


class FCTEncoderBlock(nn.Module):
    """LayerNorm -> [concat with a conv of the input image resized to this scale] -> 3x3 convs -> dropout
    -> 2x2 max pool -> FCT transformer layer. ``first`` marks the block that reads the raw image.

    Shapes: x (N, in_ch, H, W), scaled image (N, image_ch, H, W) or None -> (N, out_ch, H/2, W/2).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        image_ch: int = 0,
        num_heads: int = 1,
        kv_stride: int = 1,
        dropout: float = 0.3,
        first: bool = False,
    ) -> None:
        super().__init__()
        # No norm on the raw image (first block): a per-pixel LayerNorm over 1-3 image channels erases intensity.
        self.norm = nn.Identity() if first else LayerNorm2d(in_ch)
        # The multi-scale input: the image at this stage's scale is embedded to the width of x and concatenated.
        self.image_conv = _conv_relu(image_ch, in_ch) if image_ch else None
        first_in = 2 * in_ch if image_ch else in_ch
        convs = [_conv_relu(first_in, out_ch), _conv_relu(out_ch, out_ch)]
        self.convs = nn.Sequential(*convs, nn.Dropout(dropout), nn.MaxPool2d(2))
        self.transformer = FCTransformer(out_ch, num_heads, kv_stride)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.image_conv is not None:
            x = torch.cat([self.image_conv(image), x], dim=1)
        return self.transformer(self.convs(x))


class FCTDecoderBlock(nn.Module):
    """LayerNorm -> upsample to the skip's size -> 3x3 conv -> concat skip -> two 3x3 convs -> dropout -> FCT
    transformer layer. Shapes: x (N, in_ch, h, w), skip (N, out_ch, H, W) -> (N, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, num_heads: int = 1, kv_stride: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_ch)
        self.up_conv = _conv_relu(in_ch, out_ch)
        self.convs = nn.Sequential(_conv_relu(2 * out_ch, out_ch), _conv_relu(out_ch, out_ch), nn.Dropout(dropout))
        self.transformer = FCTransformer(out_ch, num_heads, kv_stride)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.norm(x), size=skip.shape[-2:], mode="nearest")
        x = torch.cat([skip, self.up_conv(x)], dim=1)
        return self.transformer(self.convs(x))


class _DeepSupervisionHead(nn.Sequential):
    """FCT's output head: 2x upsampling -> LayerNorm -> two 3x3 convs with ReLU -> 3x3 conv to the classes."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            LayerNorm2d(in_ch),
            _conv_relu(in_ch, in_ch),
            _conv_relu(in_ch, in_ch),
            nn.Conv2d(in_ch, num_classes, 3, padding=1),
        )


@register_model("fct")
class FCT(SegModel):
    """Fully Convolutional Transformer: a U-shaped network in which every block ends with an FCT transformer layer
    (convolutional attention + Wide-Focus). Encoder stages 2-4 also take the input image average-pooled to their
    scale (the image pyramid); block 5 is the bottleneck; four decoder blocks mirror the encoder.

    ``forward`` returns the full-resolution output of the last decoder block; in training mode it returns the three
    deep-supervision outputs of the last three decoder blocks, main (full resolution) first, then 1/2, 1/4.

    Args:
        channels: widths of the four encoder blocks and the bottleneck; the decoder mirrors them. The paper's
            are (8, 16, 32, 64, 128).
        num_heads: attention heads per layer (the reference PyTorch code uses 1).
        kv_stride: stride of the key/value projections; 1 is FCT's full attention, 2 the cheaper CvT squeeze.
        dropout: after each block's convolutions.
        in_channels, num_classes, input_size, mean, std: as for every model (:class:`~medseg_core.models.SegModel`);
            the encoder is trained from scratch, so the default ImageNet statistics are just a sensible scale.
    """

    info = ModelInfo(
        paper="Tragakis et al., The Fully Convolutional Transformer for Medical Image Segmentation, WACV 2023",
        default_encoder=None,
        input_size=224,
    )

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        channels: Sequence[int] = (8, 16, 32, 64, 128),
        num_heads: int = 1,
        kv_stride: int = 1,
        dropout: float = 0.3,
        input_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels)
        channels = [int(c) for c in channels]
        if len(channels) != 5:
            raise ValueError(f"channels needs 5 widths (4 encoder blocks + bottleneck), got {channels}")
        blk = {"num_heads": num_heads, "kv_stride": kv_stride, "dropout": dropout}
        self.encoder = nn.ModuleList(
            [FCTEncoderBlock(in_channels, channels[0], first=True, **blk)]
            + [FCTEncoderBlock(channels[i - 1], channels[i], image_ch=in_channels, **blk) for i in (1, 2, 3)]
        )
        self.bottleneck = FCTEncoderBlock(channels[3], channels[4], **blk)
        self.decoder = nn.ModuleList(FCTDecoderBlock(channels[i + 1], channels[i], **blk) for i in (3, 2, 1, 0))
        # Deep supervision from the last three decoder blocks (strides 8, 4, 2 before the heads' 2x upsampling).
        self.heads = nn.ModuleList(_DeepSupervisionHead(channels[i], num_classes) for i in (2, 1, 0))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x -> the four encoder blocks' outputs (blocks 2-4 also read the image pooled to their scale), then the
        bottleneck's."""
        features, y, image = [], x, x
        for i, block in enumerate(self.encoder):
            if i > 0:
                image = F.avg_pool2d(image, 2)
            y = block(y, image if i > 0 else None)
            features.append(y)
        return [*features, self.bottleneck(y)]

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        y, decoded = features[-1], []
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
            decoded.append(y)
        if not self.wants_side_outputs:
            return self.heads[-1](decoded[-1])
        # Heads on the last three decoder blocks, deep to shallow; returned main (shallowest) first.
        return [head(d) for head, d in zip(self.heads, decoded[1:])][::-1]
