"""``Segmenter``: the one inference path. image -> preprocess -> model (+flip TTA) -> probabilities -> resize back
-> post-processing -> mask, overlay, confidence and statistics. The app, ``evaluate.py`` and batch tools all call it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .enhance import stack_views
from .hub import load_model, recorded_postprocess, resolve_weights
from .models import SegModel
from .postprocess import apply_postprocessing

__all__ = [
    "CLASS_COLOURS",
    "MAX_IMAGE_PIXELS",
    "ImageInputError",
    "SegResult",
    "Segmenter",
    "load_image_file",
    "make_overlay",
    "to_rgb_uint8",
]

log = logging.getLogger(__name__)

#: RGB colour of each class in overlays (index 0, background, is never drawn).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (255, 48, 48), (40, 220, 80), (60, 120, 255))
DEFAULT_CLASS_NAMES = {1: ("background", "lesion"), 2: ("background", "lesion"),
                       3: ("background", "neoplastic", "non-neoplastic")}


#: Largest image (width x height) accepted from users: 40 megapixels, well above any endoscope's frame.
MAX_IMAGE_PIXELS = 40_000_000


class ImageInputError(ValueError):
    """A user-supplied file that is not an image we can segment; the message says why, in plain words."""


def load_image_file(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a user's image file to ``uint8`` RGB, or raise :class:`ImageInputError` with a clear reason.

    Handles EXIF rotation, grey, palette, RGBA, CMYK, 16-bit and animated files (first frame); refuses empty,
    truncated or non-image files and images above ``max_pixels``.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ImageInputError(f"{name} is empty: upload a PNG, JPEG, TIFF or BMP image")
    try:
        with PIL.Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageInputError(
                    f"{name} is {w}x{h} pixels ({w * h / 1e6:.0f} MP); the limit is {max_pixels / 1e6:.0f} MP. "
                    "Downscale the image and try again."
                )
            im.seek(0)
            im.load()
            im = PIL.ImageOps.exif_transpose(im)
            array = _pil_to_array(im)
    except ImageInputError:
        raise
    except PIL.Image.DecompressionBombError as err:
        raise ImageInputError(f"{name} is too large to open safely ({err})") from err
    except PIL.UnidentifiedImageError as err:
        raise ImageInputError(f"{name} is not an image file we can read (PNG, JPEG, TIFF, BMP, GIF, WebP)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(f"{name} could not be decoded; the file looks damaged or truncated ({err})") from err
    return to_rgb_uint8(array)


def _pil_to_array(im: PIL.Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        # 32-bit integer images (often 16-bit PNGs opened by Pillow): scale by the actual maximum.
        a = np.asarray(im, dtype=np.int64).clip(0)
        return (a * (255.0 / max(1, a.max()))).astype(np.uint8)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas become black, as the background of an endoscopy frame usually is.
        rgba = im.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(PIL.Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any common image array -> ``uint8`` RGB (H, W, 3).

    Accepts grey (H, W) or (H, W, 1), RGB, RGBA (alpha dropped), 16-bit (scaled to 8-bit), float in [0, 1] and bool.
    Raises ``ValueError`` for anything else (wrong rank, wrong channel count, empty).
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError("the image is empty")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a grey, RGB or RGBA image, got an array of shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.integer):
        # 16-bit (or wider) images: scale the dtype's range to 0..255 rather than clipping.
        return (image.astype(np.float64) / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        scale = 255.0 if np.nanmax(image) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(image) * scale, 0, 255).round().astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def make_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image with each lesion class tinted in its colour and outlined."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for c in range(1, int(mask.max()) + 1):
        region = mask == c
        if not region.any():
            continue
        colour = np.array(CLASS_COLOURS[c % len(CLASS_COLOURS)], np.float32)
        out[region] = (out[region] * (1 - alpha) + colour * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in colour), thickness)
    return out


@dataclass
class SegResult:
    """What a segmentation returns, all at the input image's resolution (H, W).

    Attributes:
        mask: ``uint8`` class indices (H, W); 0 is background.
        probs: ``float32`` class probabilities (C, H, W); C = 2 (background, lesion) for binary models.
        confidence: ``float32`` lesion probability (H, W): 1 - P(background).
        overlay: ``uint8`` RGB image with the lesions tinted and outlined.
        disagreement: ``float32`` (H, W) spread of the lesion probability across TTA passes (None without TTA).
        stats: areas (pixels and % of the image) per class, lesion count, mean confidence, timing.
    """

    mask: np.ndarray
    probs: np.ndarray
    confidence: np.ndarray
    overlay: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    disagreement: np.ndarray | None = None


class Segmenter:
    """Runs a model on RGB images: ``Segmenter.from_pretrained("unet_lite0.polyp")(image)``.

    Args:
        model: a :class:`SegModel`; its config gives input size and normalisation.
        device: torch device; CUDA when available by default.
        threshold: lesion probability above which a pixel is lesion (binary models).
        postprocess: post-processing step names applied to every mask (see ``medseg_core.postprocess``).
        class_names: one name per class, background first.
        name: how reports name the model (the weights name or repo id); the architecture name by default.
        refiner: a ``refiner`` model for the ``refine`` post-processing step (None when that step is not used).
        precision: ``"fp32"`` (the default; what reported metrics use) or ``"bf16"`` autocast, about 2.5x faster on
            CPUs with bf16 units and on GPUs, at a small cost in agreement with fp32 (measure it with evaluate.py).
    """

    def __init__(
        self,
        model: SegModel,
        device: str | torch.device | None = None,
        threshold: float = 0.5,
        postprocess: Sequence[str] = (),
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        refiner: SegModel | None = None,
        precision: str = "fp32",
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.name = name or model.arch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision
        # Channels-last is the faster memory layout for convolutions on CPU (oneDNN) and GPU alike.
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.threshold = threshold
        self.postprocess = tuple(postprocess)
        self.refiner = refiner.to(self.device).eval() if refiner is not None else None
        n = max(2, model.num_classes)
        self.class_names = tuple(class_names or DEFAULT_CLASS_NAMES.get(model.num_classes) or
                                 ["background"] + [f"class {c}" for c in range(1, n)])
        mean = torch.tensor(model.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        std = torch.tensor(model.std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self._mean, self._std = mean.to(self.device), std.to(self.device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | None = None, **kwargs: Any) -> Segmenter:
        """A Segmenter on weights from a folder, a ``weights/`` name or a Hub repo id.

        The post-processing chain recorded in the weights' ``config.json`` (``"postprocess"``: step names, chosen
        on a validation split by ``bench/postprocess_table.py --record``) is the default of ``postprocess``;
        when it holds ``refine``, the refiner named by ``"refiner"`` (a folder inside the weights folder, a
        ``weights/`` name or a Hub repo id) is loaded too. Pass ``postprocess=()`` for raw masks.
        """
        kwargs.setdefault("name", os.fspath(name_or_path))
        folder = resolve_weights(name_or_path)
        recorded = recorded_postprocess(folder)
        kwargs.setdefault("postprocess", recorded["steps"])
        if "refine" in kwargs["postprocess"] and kwargs.get("refiner") is None:
            if not recorded["refiner"]:
                raise ValueError(f"the 'refine' step needs a refiner, and {folder / 'config.json'} names none")
            kwargs["refiner"] = load_model(recorded["refiner"])
        return cls(load_model(folder), device=device, **kwargs)

    @property
    def num_classes(self) -> int:
        """Classes in the output mask, background included (2 for a binary model)."""
        return max(2, self.model.num_classes)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        size = self.model.input_size
        h, w = image.shape[:2]
        interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
        resized = cv2.resize(image, (size, size), interpolation=interp)
        views = getattr(self.model, "views", None)
        if views:
            # Multi-view models (DynaSiam) read TDC-Enhance views of the resized image, as in training.
            resized = stack_views(resized, views)
        x = torch.from_numpy(resized).to(self.device).permute(2, 0, 1).unsqueeze(0).float()
        # One RGB normalisation, repeated for each view stacked on the channel axis.
        repeats = x.shape[1] // self._mean.shape[1]
        return (x - self._mean.repeat(1, repeats, 1, 1)) / self._std.repeat(1, repeats, 1, 1)

    @torch.inference_mode()
    def _class_probs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(x).float()
        if logits.shape[1] == 1:
            fg = logits.sigmoid()
            return torch.cat([1 - fg, fg], dim=1)
        return logits.softmax(dim=1)

    def predict_probs(self, image: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (C, H, W) at the image's resolution, and the TTA disagreement (or None).

        TTA averages the identity, horizontal, vertical and both flips; the disagreement is the standard
        deviation of the lesion probability across those passes.
        """
        image = to_rgb_uint8(image)
        x = self._to_tensor(image)
        if tta:
            flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]
            passes = [self._class_probs(x.flip(f) if f else x) for f in flips]
            passes = [p.flip(f) if f else p for p, f in zip(passes, flips)]
            stacked = torch.cat(passes)
            probs = stacked.mean(0)
            spread = (1 - stacked[:, 0]).std(0, unbiased=False)
        else:
            probs, spread = self._class_probs(x)[0], None
        h, w = image.shape[:2]
        out = _resize_channels(probs.cpu().numpy(), w, h)
        dis = cv2.resize(spread.cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR) if spread is not None else None
        return out, dis

    def mask_from_probs(self, probs: np.ndarray) -> np.ndarray:
        """Class indices from probabilities: threshold the lesion probability (binary) or argmax (multi-class)."""
        if probs.shape[0] == 2:
            return (probs[1] > self.threshold).astype(np.uint8)
        return probs.argmax(0).astype(np.uint8)

    def __call__(self, image: np.ndarray, tta: bool = False, postprocess: Sequence[str] | None = None) -> SegResult:
        """Segment one image (any of the layouts :func:`to_rgb_uint8` accepts)."""
        start = time.perf_counter()
        image = to_rgb_uint8(image)
        probs, disagreement = self.predict_probs(image, tta=tta)
        mask = self.mask_from_probs(probs)
        steps = self.postprocess if postprocess is None else tuple(postprocess)
        if steps:
            mask = apply_postprocessing(mask, steps, probs, image=image, refiner=self.refiner)
        confidence = (1.0 - probs[0]).astype(np.float32)
        elapsed_ms = (time.perf_counter() - start) * 1000
        return SegResult(
            mask=mask,
            probs=probs,
            confidence=confidence,
            overlay=make_overlay(image, mask),
            stats=self.statistics(mask, confidence, elapsed_ms, tta, steps),
            disagreement=disagreement,
        )

    def statistics(self, mask: np.ndarray, confidence: np.ndarray, elapsed_ms: float, tta: bool,
                   steps: Sequence[str]) -> dict[str, Any]:
        """Per-class area (pixels and %), lesion count (8-connected regions), mean confidence inside lesions."""
        total = mask.size
        lesion = mask > 0
        count = cv2.connectedComponents(lesion.astype(np.uint8), connectivity=8)[0] - 1
        classes = {
            name: {"pixels": int((mask == c).sum()), "percent": round(100.0 * float((mask == c).sum()) / total, 3)}
            for c, name in enumerate(self.class_names) if c > 0
        }
        return {
            "model": self.name,
            "arch": self.model.arch,
            "image_size": [int(mask.shape[1]), int(mask.shape[0])],
            "lesion_pixels": int(lesion.sum()),
            "lesion_percent": round(100.0 * float(lesion.sum()) / total, 3),
            "lesion_count": int(count),
            "classes": classes,
            "mean_confidence": round(float(confidence[lesion].mean()), 4) if lesion.any() else None,
            "threshold": self.threshold,
            "tta": tta,
            "postprocess": list(steps),
            "inference_ms": round(elapsed_ms, 1),
        }


def _resize_channels(probs: np.ndarray, width: int, height: int) -> np.ndarray:
    """(C, h, w) -> (C, height, width), bilinear; cv2 handles at most 512 channels per call, we have a few."""
    return np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs]).astype(np.float32)
