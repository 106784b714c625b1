"""medseg_core: lesion segmentation for endoscopy images — models, data, training pieces and inference.

The public names below are imported on first use, so ``import medseg_core.enhance`` (OpenCV and numpy only) does
not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "WeightsNotFoundError": "hub",
    "list_local_weights": "hub",
    "load_model": "hub",
    "resolve_weights": "hub",
    "SegResult": "inference",
    "Segmenter": "inference",
    "to_rgb_uint8": "io",
    "create_model": "models",
    "get_model_info": "models",
    "is_model": "models",
    "list_models": "models",
    "apply_postprocessing": "postprocess",
    "resolve_postprocess": "postprocess",
    "tdc_views": "enhance",
}

__all__ = [
    "SegResult",
    "Segmenter",
    "WeightsNotFoundError",
    "apply_postprocessing",
    "create_model",
    "get_model_info",
    "is_model",
    "list_local_weights",
    "list_models",
    "load_model",
    "resolve_postprocess",
    "resolve_weights",
    "tdc_views",
    "to_rgb_uint8",
]

if TYPE_CHECKING:
    from .enhance import tdc_views
    from .hub import WeightsNotFoundError, list_local_weights, load_model, resolve_weights
    from .inference import Segmenter, SegResult
    from .io import to_rgb_uint8
    from .models import create_model, get_model_info, is_model, list_models
    from .postprocess import apply_postprocessing, resolve_postprocess


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
