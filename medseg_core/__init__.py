"""medseg_core: lesion segmentation for endoscopy images — models, data, training pieces and inference."""

from .hub import WeightsNotFoundError, list_local_weights, load_model, resolve_weights
from .inference import Segmenter, SegResult, to_rgb_uint8
from .models import create_model, get_model_info, is_model, list_models
from .postprocess import apply_postprocessing

__version__ = "0.1.0"

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
    "resolve_weights",
    "to_rgb_uint8",
]
