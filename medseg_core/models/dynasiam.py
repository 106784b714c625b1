"""DynaSiam (He et al., Neurocomputing 2024): a multi-path network over an image and its TDC-Enhance views.

Stage 1 (``medseg_core.enhance``) turns an RGB image into views (original, texture, detail, colour); stage 2,
this model, reads them stacked on the channel axis, ``(N, 3*V, H, W)``:

* **Dependent encoders**: one copy per view of the encoder's first ``dependent_stages`` stages, so each view
  learns its own low-level filters (sharpened texture and equalised colour call for different ones).
* **Shared encoder**: the remaining, deep stages, one set of weights run on all views (the views are stacked on
  the batch axis, so it is one pass of a batch V times larger).
* **Dynamic Feature Interaction** (:class:`DynamicFeatureInteraction`) at every scale: fuses the V views'
  features with weights predicted from the features themselves (``dfi=False``: plain averaging, the ablation).
* **Fusion decoder**: a U-Net decoder over the fused multi-scale features.

How the encoder is split: a timm ``features_only`` encoder is cut into one segment per feature output by running
its modules in their forward order (``conv_stem``, ``bn1``, ``blocks.0``, ... for EfficientNet; the
``FeatureListNet`` layers for ResNet-style models), each segment ending at a feature output. Each view's
dependent encoder starts as a copy of the first segments (ImageNet weights included), the shared encoder is the
original deeper segments. All views share one RGB normalisation (``mean``/``std`` of the encoder), applied to each
view before stacking; ``config.json`` records ``views``, ``mean`` and ``std``, and ``Segmenter`` builds the views.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.models._features import FeatureListNet
from timm.models.efficientnet import EfficientNetFeatures

from ..enhance import VIEWS
from .base import ModelInfo, SegModel
from .registry import register_model
from .unet import UNetDecoder

__all__ = ["DynaSiam", "DynamicFeatureInteraction", "split_encoder_stages"]


def _ordered_modules(encoder: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """The encoder's modules in forward order, and the names after which it emits a feature map."""
    if isinstance(encoder, EfficientNetFeatures) and encoder.feature_hooks is None:
        modules = [("conv_stem", encoder.conv_stem), ("bn1", encoder.bn1)]
        modules += [(f"blocks.{i}", block) for i, block in enumerate(encoder.blocks)]
        return modules, list(encoder.feature_info.module_name())
    if isinstance(encoder, FeatureListNet) and str(encoder.output_fmt.name) == "NCHW" and not encoder.concat:
        return list(encoder.items()), list(encoder.return_layers)
    raise ValueError(
        f"dynasiam can split EfficientNet and ResNet-style timm encoders into stages, not {type(encoder).__name__}"
    )


def split_encoder_stages(encoder: nn.Module) -> list[nn.Sequential]:
    """A timm ``features_only`` encoder as one ``nn.Sequential`` per feature output: running them in turn gives
    the same feature maps as ``encoder(x)``, the i-th segment's output being the i-th feature map."""
    modules, outputs = _ordered_modules(encoder)
    stages, current = [], []
    for name, module in modules:
        current.append(module)
        if name in outputs:
            stages.append(nn.Sequential(*current))
            current = []
    if len(stages) != len(outputs):
        raise ValueError(f"could not find the feature outputs {outputs} of {type(encoder).__name__}")
    return stages


class DynamicFeatureInteraction(nn.Module):
    """Dynamic Feature Interaction (DFI, DynaSiam): fuse V views' feature maps with input-dependent weights.

    Each view gets a weight per channel (from the global-average-pooled features of *all* views, through a small
    MLP, so one view's weight depends on what the others show) plus a weight per pixel (a 1x1 conv on all views'
    features); the two logits add up and a softmax over the views turns them into convex weights. The last layer
    of both gates starts at zero, so an untrained block averages the views, which is also the ``dfi=False``
    ablation; training then learns where to trust which view.

    Args:
        channels: C, channels of every view's features.
        num_views: V.
        reduction: hidden width of the channel gate is ``max(8, V * C // reduction)``.
        spatial: also predict per-pixel weights.
    """

    def __init__(self, channels: int, num_views: int, reduction: int = 4, spatial: bool = True) -> None:
        super().__init__()
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.channels, self.num_views = int(channels), int(num_views)
        width = self.channels * self.num_views
        hidden = max(8, width // max(1, reduction))
        self.channel_gate = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        self.spatial_gate = nn.Conv2d(width, self.num_views, 1) if spatial else None
        nn.init.zeros_(self.channel_gate[-1].weight)
        nn.init.zeros_(self.channel_gate[-1].bias)
        if self.spatial_gate is not None:
            nn.init.zeros_(self.spatial_gate.weight)
            nn.init.zeros_(self.spatial_gate.bias)

    def view_weights(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, V, C, h, w) -> weights (N, V, C, h, w) (or (N, V, C, 1, 1) without the spatial gate),
        non-negative and summing to 1 over V."""
        n, v, c, h, w = feats.shape
        if (v, c) != (self.num_views, self.channels):
            raise ValueError(f"expected {self.num_views} views of {self.channels} channels, got {v} of {c}")
        pooled = feats.mean(dim=(3, 4)).reshape(n, v * c)
        logits = self.channel_gate(pooled).view(n, v, c, 1, 1)
        if self.spatial_gate is not None:
            logits = logits + self.spatial_gate(feats.reshape(n, v * c, h, w)).unsqueeze(2)
        return logits.softmax(dim=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, V, C, h, w) -> fused (N, C, h, w)."""
        return (self.view_weights(feats) * feats).sum(dim=1)


@register_model("dynasiam")
class DynaSiam(SegModel):
    """DynaSiam: per-view shallow encoders, a shared deep encoder, DFI fusion at every scale, a U-Net decoder.

    Args:
        views: the TDC-Enhance views read, in their channel order (see ``medseg_core.enhance.VIEWS``).
        decoder_channels: one width per decoder block; at least as many blocks as skips.
        dependent_stages: how many of the encoder's first stages each view has its own copy of (1 up to the
            number of stages minus one).
        dfi: fuse views with Dynamic Feature Interaction; False averages them (the ablation).
        dfi_reduction: hidden-width divisor of DFI's channel gate.
        in_channels: must be ``3 * len(views)`` when given; derived from ``views`` otherwise.
        encoder, encoder_weights, num_classes, input_size, mean, std: as for every model
            (:class:`~medseg_core.models.SegModel`); mean/std are one RGB normalisation, applied to every view.
    """

    info = ModelInfo(
        paper="He et al., A two-stage image enhancement and dynamic feature aggregation framework for gastroscopy "
        "image segmentation (TDC-Enhance + DynaSiam), Neurocomputing 2024",
        default_encoder="tf_efficientnet_lite0",
        views=VIEWS,
    )

    def __init__(
        self,
        encoder: str = "tf_efficientnet_lite0",
        encoder_weights: str = "imagenet",
        views: Sequence[str] = VIEWS,
        num_classes: int = 1,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dependent_stages: int = 2,
        dfi: bool = True,
        dfi_reduction: int = 4,
        input_size: int = 352,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        in_channels: int | None = None,
    ) -> None:
        views = tuple(views)
        unknown = [v for v in views if v not in VIEWS]
        if not views or unknown or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct names from {list(VIEWS)}, got {list(views)}")
        if in_channels is not None and in_channels != 3 * len(views):
            raise ValueError(f"in_channels must be 3 * len(views) = {3 * len(views)}, got {in_channels}")
        # One RGB encoder, cut into stages below: each view runs through it on its own.
        super().__init__(num_classes, input_size, mean, std, 3 * len(views), encoder=encoder,
                         encoder_weights=encoder_weights, in_chans=3)
        base = self.encoder
        del self.encoder  # its stages live on as ``dependent`` (copied per view) and ``shared``
        self.views = views
        self.dfi = bool(dfi)
        stages = split_encoder_stages(base)
        if not 1 <= dependent_stages < len(stages):
            raise ValueError(f"dependent_stages must be in 1..{len(stages) - 1} for {encoder}, got {dependent_stages}")
        self.dependent = nn.ModuleList(
            nn.ModuleList(copy.deepcopy(stage) for stage in stages[:dependent_stages]) for _ in views
        )
        self.shared = nn.ModuleList(stages[dependent_stages:])
        channels = base.feature_info.channels()
        self.fusion = nn.ModuleList(
            DynamicFeatureInteraction(ch, len(views), dfi_reduction) if dfi else nn.Identity() for ch in channels
        )
        self.decoder = UNetDecoder.build(channels, decoder_channels, encoder)
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {**super().preprocessing, "views": list(self.views)}

    def _fuse(self, i: int, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, V, C, h, w) of scale ``i`` -> (N, C, h, w)."""
        return self.fusion[i](feats) if self.dfi else feats.mean(dim=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, 3*V, H, W) -> the fused features of every scale, shallow to deep, each (N, C_i, H_i, W_i)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels ({len(self.views)} views of 3), got {x.shape[1]}")
        n, num_views = x.shape[0], len(self.views)
        per_view: list[list[torch.Tensor]] = []
        for view, stages in zip(x.split(3, dim=1), self.dependent):
            outs = []
            for stage in stages:
                view = stage(view)
                outs.append(view)
            per_view.append(outs)
        fused = [self._fuse(i, torch.stack(scale, dim=1)) for i, scale in enumerate(zip(*per_view))]
        # Views on the batch axis: one pass of the shared stages for all of them.
        y = torch.cat([outs[-1] for outs in per_view], dim=0)
        for stage in self.shared:
            y = stage(y)
            fused.append(self._fuse(len(fused), y.unflatten(0, (num_views, n)).transpose(0, 1)))
        return fused
