"""Blocks shared by several architectures; a block that one model uses lives in that model's file.

``act_layer`` / ``norm_layer`` may be a class or a name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ASPP", "ConvBNAct", "gate_logits", "get_act", "get_norm", "pick_stages"]

_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "identity": nn.Identity}
_NORMS: dict[str, type[nn.Module]] = {"batchnorm": nn.BatchNorm2d, "instancenorm": nn.InstanceNorm2d}


def get_act(act: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(act, str):
        if act not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; choose from {sorted(_ACTS)}")
        return _ACTS[act]
    return act


def get_norm(norm: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose from {sorted(_NORMS)}")
        return _NORMS[norm]
    return norm


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> norm -> activation; 'same' padding for odd kernels."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: str | type[nn.Module] = "batchnorm",
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        act = get_act(act_layer)
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            get_norm(norm_layer)(out_ch),
            act(inplace=True) if act in (nn.ReLU, nn.SiLU) else act(),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3, Chen et al. 2017): parallel 1x1 and dilated 3x3 convs plus
    image-level pooling, concatenated and projected.

    Args:
        in_ch, out_ch: input channels and the width of every branch and of the output.
        rates: dilation of each 3x3 branch, e.g. (6, 12, 18) at output stride 16.
        dropout: dropout after the projection.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H, W).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        norm_layer: str | type[nn.Module] = "batchnorm",
        act_layer: str | type[nn.Module] = "relu",
    ) -> None:
        super().__init__()
        branches = [ConvBNAct(in_ch, out_ch, 1, norm_layer=norm_layer, act_layer=act_layer)]
        branches += [ConvBNAct(in_ch, out_ch, 3, dilation=r, norm_layer=norm_layer, act_layer=act_layer) for r in rates]
        self.branches = nn.ModuleList(branches)
        # No norm on the pooled branch: it is 1x1 spatially, so BatchNorm would fail on a batch of one in training.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), get_act(act_layer)())
        self.project = nn.Sequential(
            ConvBNAct(out_ch * (len(branches) + 1), out_ch, 1, norm_layer=norm_layer, act_layer=act_layer),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def pick_stages(reductions: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Indices of the encoder outputs at the given strides, so one decoder fits encoders with 4 stages (PVTv2:
    4..32) and with 5 (EfficientNet, ResNet: 2..32)."""
    reductions = list(reductions)
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ValueError(f"the encoder has no output at stride(s) {missing}; its strides are {reductions}")
    return [reductions.index(s) for s in strides]


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
