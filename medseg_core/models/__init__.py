"""Every architecture, created by name: ``create_model("unet", encoder="tf_efficientnet_lite0")``.

Importing this package imports each architecture module, which registers itself.
"""

# One import per architecture module (each registers itself); keep one per line.
from . import unet  # noqa: F401
# model zoo (a)
# model zoo (b)
# dynasiam
# refiner
from .base import ModelInfo, SegModel
from .registry import create_model, get_model_class, get_model_info, is_model, list_models, register_model

__all__ = [
    "ModelInfo",
    "SegModel",
    "create_model",
    "get_model_class",
    "get_model_info",
    "is_model",
    "list_models",
    "register_model",
]
