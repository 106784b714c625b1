"""The model registry: one decorator, one place that knows every architecture by name (timm's pattern)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from .base import ModelInfo, SegModel

__all__ = ["create_model", "get_model_class", "get_model_info", "is_model", "list_models", "register_model"]

_MODELS: dict[str, type[SegModel]] = {}
T = TypeVar("T", bound=type[SegModel])


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_model("unet")`` makes ``create_model("unet", ...)`` build that class."""

    def wrap(cls: T) -> T:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.arch = name
        _MODELS[name] = cls
        return cls

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def get_model_class(name: str) -> type[SegModel]:
    """The class registered as ``name``; an unknown name raises ``ValueError`` with the close matches."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _MODELS[name]


def get_model_info(name: str) -> ModelInfo:
    """An architecture's metadata (default input size, paper, licence), without building it."""
    return get_model_class(name).info


def create_model(name: str, **kwargs: Any) -> SegModel:
    """Build a registered model. ``None`` values are dropped so YAML/CLI defaults never override the model's own."""
    return get_model_class(name)(**{k: v for k, v in kwargs.items() if v is not None})
