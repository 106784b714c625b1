"""Every architecture, created by name: ``create_model("unet", encoder="tf_efficientnet_lite0")``.

Importing this package imports each architecture module, which registers itself.
"""

# One import per architecture module (each registers itself); keep one per line.
from . import aspp_net  # noqa: F401
from . import attention_unet  # noqa: F401
from . import ddanet  # noqa: F401
from . import deeplabv3plus  # noqa: F401
from . import dynasiam  # noqa: F401
from . import emcad  # noqa: F401
from . import fct  # noqa: F401
from . import pranet  # noqa: F401
from . import refiner  # noqa: F401
from . import ssformer  # noqa: F401
from . import unet  # noqa: F401
from . import unet3plus  # noqa: F401
from . import unetplusplus  # noqa: F401
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
