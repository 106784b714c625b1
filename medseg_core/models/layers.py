"""Blocks shared by the architectures. ``act_layer`` / ``norm_layer`` may be a class or a name."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["ConvBNAct", "get_act", "get_norm"]

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
