"""``Segmenter``: the one inference path. image -> preprocess -> model (+flip and scale TTA) -> probabilities -> resize
back -> post-processing -> mask, overlay, confidence and statistics. The app, ``evaluate.py`` and batch tools all
call it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

from .backends import BackendName, create_backend
from .enhance import stack_views
from .hub import Weights, resolve
from .io import IMAGE_FORMAT_NAMES, to_rgb_uint8
from .labels import LabelSchema, schema_from_config
from .models import SegModel
from .postprocess import PostprocessSpec, apply_postprocessing, resolve_postprocess
from .presence import PresenceRule, apply_presence
from .safety import TTA_SCALE_RANGE

__all__ = [
    "CLASS_COLOURS",
    "MAX_IMAGE_PIXELS",
    "ImageInputError",
    "SegResult",
    "Segmenter",
    "load_image_file",
    "make_overlay",
]

log = logging.getLogger(__name__)

#: RGB colour of each class in overlays (index 0, background, is never drawn).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (255, 48, 48), (40, 220, 80), (60, 120, 255))


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
    if not os.path.isfile(path):
        raise ImageInputError(f"{name} does not exist: give the path of a {IMAGE_FORMAT_NAMES} image")
    if os.path.getsize(path) == 0:
        raise ImageInputError(f"{name} is empty: upload a {IMAGE_FORMAT_NAMES} image")
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
        raise ImageInputError(f"{name} is not an image file we can read ({IMAGE_FORMAT_NAMES})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(f"{name} could not be decoded; the file looks damaged or truncated ({err})") from err
    try:
        return to_rgb_uint8(array)
    except ValueError as err:
        raise ImageInputError(f"{name}: {err}") from err


def _pil_to_array(im: PIL.Image.Image) -> np.ndarray:
    """A Pillow image as an array :func:`medseg_core.io.to_rgb_uint8` takes: 16-bit, 32-bit and float modes keep
    their values (it windows them to 8 bits, as training does); transparency stays as an alpha channel."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        return np.asarray(im, dtype=np.int64)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))


def make_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4,
                 colours: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """The image with each lesion class tinted in its colour and outlined.

    ``mask``: class indices (H, W), ``colours[c]`` for class ``c`` (index 0, background, is never drawn); or a 0/1
    stack (K, H, W) of overlapping classes, ``colours[k]`` for class ``k``: each drawn as an outline only (thicker,
    with a light tint), so that every class stays visible where they overlap.
    """
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 300))
    if mask.ndim == 3:
        palette = colours or CLASS_COLOURS[1:]
        for k, plane in enumerate(mask):
            region = plane > 0
            if not region.any():
                continue
            colour = np.array(palette[k % len(palette)], np.float32)
            out[region] = (out[region] * (1 - alpha / 3) + colour * alpha / 3).astype(np.uint8)
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(v) for v in colour), 2 * thickness)
        return out
    palette = colours or CLASS_COLOURS
    for c in range(1, int(mask.max()) + 1):
        region = mask == c
        if not region.any():
            continue
        colour = np.array(palette[c % len(palette)], np.float32)
        out[region] = (out[region] * (1 - alpha) + colour * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in colour), thickness)
    return out


def check_thresholds(threshold: float | Sequence[float], schema: LabelSchema) -> float | list[float]:
    """A threshold, or one per class of a multi-label schema, each from 0 to 1; ValueError if not."""
    values = [threshold] if isinstance(threshold, (int, float)) else list(threshold)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"thresholds must be numbers from 0 to 1, got {values}")
    if len(values) == 1:
        return float(values[0])
    if not schema.multilabel:
        raise ValueError(f"per-class thresholds need a multi-label schema; this one is {schema.task}")
    if len(values) != len(schema.foreground):
        raise ValueError(f"{len(values)} thresholds for {len(schema.foreground)} classes "
                         f"({', '.join(schema.foreground)}); give one per class")
    return [float(v) for v in values]


@dataclass
class SegResult:
    """What a segmentation returns, all at the input image's resolution (H, W).

    Attributes:
        mask: ``uint8`` class indices (H, W), 0 the background; for multi-label models a 0/1 stack (K, H, W), one
            plane per class of the schema (classes may overlap).
        probs: ``float32`` class probabilities (C, H, W); C = 2 (background, lesion) for binary models; for
            multi-label models one sigmoid per class (K, H, W).
        confidence: ``float32`` lesion probability (H, W): 1 - P(background), or the largest class probability
            for multi-label models.
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
    """Runs a model on RGB images: ``Segmenter.from_pretrained("unet_lite2.polyp")(image)``.

    Args:
        model: a :class:`SegModel`; its config gives input size and normalisation.
        device: torch device; CUDA when available by default.
        threshold: probability above which a pixel is lesion (binary models) or belongs to a class (multi-label
            models): one number, or one per class of a multi-label schema (``from_pretrained`` takes the
            per-class thresholds recorded in ``config.json`` by ``medseg-calibrate --what thresholds --record``, if
            any).
            Multi-class models take the most probable class and have no threshold.
        postprocess: the default post-processing of every call: ``"recorded"`` (``recorded_postprocess``, the
            default), ``"none"`` or step names (see ``medseg_core.postprocess``).
        recorded_postprocess: the chain recorded with the weights (``from_pretrained`` reads it from config.json).
        schema: the label schema (task, class names, colours); by default the one in the model's config (see
            ``medseg_core.labels.schema_from_config``).
        name: how reports name the model (the weights name or repo id); the architecture name by default.
        refiner: a ``refiner`` model for the ``refine`` post-processing step, or a callable returning one (loaded
            on first use); None when that step is not used.
        precision: ``"fp32"`` (the default; what reported metrics use) or ``"bf16"`` autocast, about 2.5x faster on
            CPUs with bf16 units and on GPUs, at a small cost in agreement with fp32 (measure it with evaluate.py).
        backend: what runs the network (``medseg_core.backends``): ``"torch"`` (eager), ``"onnxruntime"`` (needs
            ``onnx_path``) or ``"auto"`` (onnxruntime when ``onnx_path`` exists and the package imports).
        onnx_path: the exported network (``model.onnx`` from ``medseg_core.export``) for the onnxruntime backend.
        tta_scales: factors of the input size at which TTA runs its flips (``(1.0,)``, flips only, by default;
            e.g. ``(0.82, 1.0, 1.18)``); each size is rounded to a multiple of 32, the encoders' largest stride.
            Other sizes than the input size need the torch backend (an exported file has a fixed input size).
            ``from_pretrained`` takes the ``tta_scales`` recorded in ``config.json``, if any.
        class_bias: multi-class models only: one log-odds offset per class, added when choosing *which* lesion
            class a lesion pixel (and, with ``region_class_consistency``, a lesion region) takes; where the lesion
            is (any class against background) and the reported probabilities are unchanged. It corrects a rare
            class's under-prediction (logit adjustment); ``medseg-calibrate --what class-bias`` chooses it on a
            validation split and records it in ``config.json``, which ``from_pretrained`` reads. None or zeros:
            plain argmax.
        presence: the image-level "lesion present" rule (:class:`~medseg_core.presence.PresenceRule`) recorded with
            the weights (``from_pretrained`` reads ``"presence"`` from config.json); None: every region counts.
        apply_presence: ``"recorded"`` (the default) applies ``presence`` to every call, ``"none"`` does not; a
            call's ``presence`` argument overrides it.
    """

    def __init__(
        self,
        model: SegModel,
        device: str | torch.device | None = None,
        threshold: float | Sequence[float] = 0.5,
        postprocess: PostprocessSpec = "recorded",
        recorded_postprocess: Sequence[str] = (),
        schema: LabelSchema | None = None,
        name: str | None = None,
        refiner: SegModel | Callable[[], SegModel] | None = None,
        precision: str = "fp32",
        backend: BackendName = "torch",
        onnx_path: str | os.PathLike | None = None,
        tta_scales: Sequence[float] = (1.0,),
        class_bias: Sequence[float] | None = None,
        presence: PresenceRule | None = None,
        apply_presence: str = "recorded",
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.name = name or model.arch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision
        # The engine that runs the network; pre- and post-processing below are the same for every engine.
        # An explicit bf16 request means eager PyTorch, since onnxruntime runs the exported file as it is.
        self.backend = create_backend("torch" if backend == "auto" and precision != "fp32" else backend, model,
                                      device=self.device, precision=precision, onnx_path=onnx_path)
        # TorchBackend already moved the model (channels-last, eval); other engines only read its config here.
        self.model = model.eval()
        self.recorded_postprocess = resolve_postprocess("none" if not recorded_postprocess else
                                                        list(recorded_postprocess))
        self.postprocess = resolve_postprocess(postprocess, self.recorded_postprocess)
        self._refiner = refiner.to(self.device).eval() if isinstance(refiner, SegModel) else refiner
        self.schema = schema or schema_from_config(model.config)
        if not self.schema.outputs_ok(model.num_classes):
            raise ValueError(f"the {self.schema.task} schema of {self.name} ({len(self.schema.class_names)} classes) "
                             f"does not fit a model with {model.num_classes} outputs")
        self.class_names = self.schema.class_names
        self.threshold = check_thresholds(threshold, self.schema)
        self.tta_sizes = tta_sizes(model.input_size, tta_scales)
        self.class_bias = check_class_bias(class_bias, self.schema)
        self.presence = presence
        self.apply_presence = _presence_mode(apply_presence)
        if self.backend.name != "torch" and self.tta_sizes != [model.input_size]:
            raise ValueError(f"TTA at other sizes than the input size ({model.input_size}) needs the torch backend; "
                             f"{self.backend.name} runs a file exported at that size")
        # Normalisation of 0..255 values, one (mean, std) per RGB channel, repeated for each stacked view.
        repeats = max(1, model.in_channels // len(model.mean))
        self._mean = np.tile(np.asarray(model.mean, np.float32) * np.float32(255), repeats)
        self._std = np.tile(np.asarray(model.std, np.float32) * np.float32(255), repeats)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | Weights, device: str | None = None,
                        **kwargs: Any) -> Segmenter:
        """A Segmenter on weights from a folder, a ``weights/`` name, a Hub repo id or a :class:`~medseg_core.hub.
        Weights` already read; ``config.json`` is read once (:func:`medseg_core.hub.resolve`).

        The post-processing chain recorded in the weights' ``config.json`` (``"postprocess"``: step names, chosen
        on a validation split by ``medseg-calibrate --what postprocess --record``) is what ``"recorded"``, the default,
        means; the refiner its ``refine`` step needs (``"refiner"``: a folder inside the weights folder, a
        ``weights/`` name or a Hub repo id) is loaded on first use. Pass ``postprocess="none"`` for raw masks.

        ``backend="auto"`` (the default here) runs the folder's ``model.onnx`` with onnxruntime when both exist,
        else eager PyTorch; ``onnx_path`` picks another exported file (e.g. ``model.int8.onnx``).
        """
        weights = resolve(name_or_path)
        kwargs.setdefault("name", weights.source if isinstance(name_or_path, Weights) else os.fspath(name_or_path))
        kwargs["recorded_postprocess"] = list(weights.postprocess)
        if kwargs.get("refiner") is None and weights.refiner:
            kwargs["refiner"] = weights.load_refiner  # loaded on first use
        kwargs.setdefault("schema", weights.schema)
        if kwargs.get("threshold") is None:
            kwargs["threshold"] = weights.thresholds or 0.5
        if kwargs.get("class_bias") is None:
            kwargs["class_bias"] = weights.class_bias
        if kwargs.get("tta_scales") is None:
            kwargs["tta_scales"] = weights.tta_scales or (1.0,)
        if kwargs.get("presence") is None and weights.presence is not None:
            kwargs["presence"] = weights.presence
        kwargs.setdefault("backend", "auto")
        kwargs.setdefault("onnx_path", weights.onnx_path)
        return cls(weights.load_model(), device=device, **kwargs)

    @property
    def refiner(self) -> SegModel | None:
        """The ``refine`` step's network (loaded on first use when given as a callable)."""
        if self._refiner is not None and not isinstance(self._refiner, SegModel):
            self._refiner = self._refiner().to(self.device).eval()  # once, on first use
        return self._refiner

    @property
    def num_classes(self) -> int:
        """Classes in the output mask, background included (2 for a binary model); for a multi-label model, its
        number of classes."""
        return len(self.schema.class_names)

    def _preprocess(self, image: np.ndarray, size: int | None = None) -> np.ndarray:
        """The network's input for one RGB image: ``float32`` (1, C, size, size), normalised; ``size`` is the
        model's input size unless given (multi-scale TTA).

        The array is an (N, C, H, W) view of an (N, H, W, C) buffer, which is the channels-last layout eager
        PyTorch wants; onnxruntime makes it contiguous. Done in numpy/cv2 once, on the model's input size.
        """
        size = size or self.model.input_size
        h, w = image.shape[:2]
        if (h, w) == (size, size):
            resized = image  # cv2.resize would return a copy of the same pixels
        else:
            interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
            resized = cv2.resize(image, (size, size), interpolation=interp)
        views = getattr(self.model, "views", None)
        if views:
            # Multi-view models (DynaSiam) read TDC-Enhance views of the resized image, as in training.
            resized = stack_views(resized, views)
        x = resized.astype(np.float32)
        np.subtract(x, self._mean, out=x)
        np.divide(x, self._std, out=x)
        return x.transpose(2, 0, 1)[None]

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """:meth:`_preprocess` as a CPU tensor (1, C, size, size) sharing its memory."""
        return torch.from_numpy(self._preprocess(image))

    @torch.inference_mode()
    def _class_probs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C, h, w) of the network input; C = 2 (background, lesion) for binary models."""
        if isinstance(x, torch.Tensor):
            x = x.cpu().numpy()
        logits = torch.from_numpy(self.backend(x))
        if self.schema.multilabel:
            return logits.sigmoid()
        if logits.shape[1] == 1:
            fg = logits.sigmoid()
            return torch.cat([1 - fg, fg], dim=1)
        return logits.softmax(dim=1)

    def predict_probs(self, image: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (C, H, W) at the image's resolution, and the TTA disagreement (or None).

        TTA averages the identity, horizontal, vertical and both flips, at each of ``tta_sizes`` (their outputs
        resized to the input size); the disagreement is the standard deviation of the lesion probability across
        those passes.
        """
        image = to_rgb_uint8(image)
        h, w = image.shape[:2]
        if not tta:
            return _resize_channels(self._class_probs(self._preprocess(image))[0].numpy(), w, h), None
        flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]
        base = self.model.input_size
        passes = []
        for size in self.tta_sizes:
            x = self._preprocess(image, size)
            for f in flips:
                p = self._class_probs(np.ascontiguousarray(np.flip(x, f)) if f else x)
                p = p.flip(f) if f else p
                passes.append(p if size == base else F.interpolate(p, size=(base, base), mode="bilinear",
                                                                   align_corners=False))
        stacked = torch.cat(passes)
        probs = stacked.mean(0)
        lesion = stacked.amax(1) if self.schema.multilabel else 1 - stacked[:, 0]
        spread = lesion.std(0, unbiased=False)
        dis = cv2.resize(spread.numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        return _resize_channels(probs.numpy(), w, h), dis

    def network_probs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``float32`` (N, C, size, size) of several RGB images at the network's resolution, in
        one network call (what video batches use; :meth:`probs_at` takes them back to an image's size)."""
        x = np.concatenate([self._preprocess(to_rgb_uint8(im)) for im in images])
        return self._class_probs(x).numpy()

    @staticmethod
    def probs_at(probs: np.ndarray, height: int, width: int) -> np.ndarray:
        """Network-resolution probabilities (C, h, w) resized (bilinear) to (C, height, width), as
        :meth:`predict_probs` returns them."""
        return _resize_channels(probs, width, height)

    def mask_from_probs(self, probs: np.ndarray) -> np.ndarray:
        """Class indices from probabilities: threshold the lesion probability (binary) or argmax (multi-class);
        for multi-label models each class's probability thresholded, a 0/1 stack (K, H, W)."""
        if self.schema.multilabel:
            return (probs > np.asarray(self.threshold, np.float32).reshape(-1, 1, 1)).astype(np.uint8)
        if probs.shape[0] == 2:
            return (probs[1] > self.threshold).astype(np.uint8)
        if self.class_bias is None:
            return probs.argmax(0).astype(np.uint8)
        lesion = probs.argmax(0) > 0
        return np.where(lesion, 1 + self.decision_probs(probs)[1:].argmax(0), 0).astype(np.uint8)

    def decision_probs(self, probs: np.ndarray) -> np.ndarray:
        """What class decisions read: the probabilities with each lesion class's scaled by ``exp(class_bias)``
        (the background's left as it is, so lesion extent is unchanged); ``probs`` itself without a bias."""
        if self.class_bias is None:
            return probs
        scale = np.exp(np.asarray(self.class_bias, np.float32))
        return probs * (scale / scale[0]).reshape(-1, 1, 1)

    def __call__(self, image: np.ndarray, tta: bool = False, postprocess: PostprocessSpec | None = None,
                 presence: str | None = None) -> SegResult:
        """Segment one image (any of the layouts :func:`to_rgb_uint8` accepts).

        ``postprocess``: ``"recorded"``, ``"none"`` or step names; ``presence``: ``"recorded"`` or ``"none"``; None
        keeps this Segmenter's default for either."""
        start = time.perf_counter()
        image = to_rgb_uint8(image)
        probs, disagreement = self.predict_probs(image, tta=tta)
        return self.result_from_probs(image, probs, postprocess, tta=tta, disagreement=disagreement, started=start,
                                      presence=presence)

    def result_from_probs(self, image: np.ndarray, probs: np.ndarray, postprocess: PostprocessSpec | None = None,
                          tta: bool = False, disagreement: np.ndarray | None = None,
                          started: float | None = None, presence: str | None = None) -> SegResult:
        """Everything after the network, for probabilities (C, H, W) already at the RGB ``image``'s size: the mask,
        post-processing, the lesion-present decision, confidence, overlay and statistics (``__call__`` and video
        frames share it)."""
        mask, steps = self.processed_mask(image, probs, postprocess)
        confidence = (probs.max(0) if self.schema.multilabel else 1.0 - probs[0]).astype(np.float32)
        mask, decision = apply_presence(mask, confidence, self.presence_rule(presence))
        elapsed_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
        colours = self.schema.foreground_colours if self.schema.multilabel else self.schema.colours
        return SegResult(
            mask=mask,
            probs=probs,
            confidence=confidence,
            overlay=make_overlay(image, mask, colours=colours),
            stats={**self.statistics(mask, confidence, elapsed_ms, tta, steps), **decision},
            disagreement=disagreement,
        )

    def presence_rule(self, presence: str | None = None) -> PresenceRule | None:
        """The lesion-present rule a call applies: the recorded one unless ``presence`` (or, when it is None, this
        Segmenter's ``apply_presence``) is ``"none"``; None when no rule is recorded."""
        mode = self.apply_presence if presence is None else _presence_mode(presence)
        return self.presence if mode == "recorded" else None

    def processed_mask(self, image: np.ndarray, probs: np.ndarray,
                       postprocess: PostprocessSpec | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
        """The mask of :meth:`result_from_probs` alone (class decision and post-processing, no overlay or
        statistics), and the post-processing steps it ran."""
        mask = self.mask_from_probs(probs)
        steps = self.postprocess if postprocess is None else resolve_postprocess(postprocess, self.recorded_postprocess)
        if steps:
            if "refine" in steps and self.refiner is None:
                raise ValueError(f"the 'refine' step needs a refiner, and the weights of {self.name} name none")
            mask = self._postprocess(mask, steps, self.decision_probs(probs), image)
        return mask, steps

    def _postprocess(self, mask: np.ndarray, steps: Sequence[str], probs: np.ndarray, image: np.ndarray) -> np.ndarray:
        if not self.schema.multilabel:
            return apply_postprocessing(mask, steps, probs, image=image, refiner=self.refiner)
        # Overlapping classes: each class's plane is post-processed as a binary mask of its own.
        return np.stack([apply_postprocessing(plane, steps, np.stack([1 - p, p]), image=image, refiner=self.refiner)
                         for plane, p in zip(mask, probs)])

    def statistics(self, mask: np.ndarray, confidence: np.ndarray, elapsed_ms: float, tta: bool,
                   steps: Sequence[str]) -> dict[str, Any]:
        """Per-class area (pixels and %), lesion count (8-connected regions of any class), mean confidence inside
        lesions."""
        planes = mask if self.schema.multilabel else [mask == c for c in range(1, len(self.class_names))]
        lesion = mask.any(axis=0) if self.schema.multilabel else mask > 0
        total = lesion.size
        count = cv2.connectedComponents(lesion.astype(np.uint8), connectivity=8)[0] - 1
        classes = {name: {"pixels": int(plane.sum()), "percent": round(100.0 * float(plane.sum()) / total, 3)}
                   for name, plane in zip(self.schema.foreground, planes)}
        return {
            "model": self.name,
            "arch": self.model.arch,
            "image_size": [int(lesion.shape[1]), int(lesion.shape[0])],
            "task": self.schema.task,
            "lesion_pixels": int(lesion.sum()),
            "lesion_percent": round(100.0 * float(lesion.sum()) / total, 3),
            "lesion_count": int(count),
            "classes": classes,
            "mean_confidence": round(float(confidence[lesion].mean()), 4) if lesion.any() else None,
            "threshold": self.threshold,
            "tta": tta,
            "tta_sizes": self.tta_sizes if tta else [],
            "postprocess": list(steps),
            "inference_ms": round(elapsed_ms, 1),
        }


def _presence_mode(value: str) -> str:
    if value not in ("recorded", "none"):
        raise ValueError(f"presence must be 'recorded' or 'none', got {value!r}")
    return value


def check_class_bias(bias: Sequence[float] | None, schema: LabelSchema) -> list[float] | None:
    """A multi-class model's per-class log-odds offsets, checked (one finite number per class); None when absent
    or all equal (a common offset changes no decision). ValueError for other schemas or a wrong length."""
    if bias is None:
        return None
    values = [float(b) for b in bias]
    if schema.task != "multiclass":
        raise ValueError(f"class_bias is for multi-class models; this one is {schema.task}")
    if len(values) != len(schema.class_names) or not all(np.isfinite(values)):
        raise ValueError(f"class_bias needs one finite number per class ({len(schema.class_names)}: "
                         f"{', '.join(schema.class_names)}), got {bias}")
    return None if len(set(values)) == 1 else values


def tta_sizes(input_size: int, scales: Sequence[float], multiple: int = 32) -> list[int]:
    """The network sizes of multi-scale TTA: each factor of ``input_size`` rounded to ``multiple`` (at least one
    ``multiple``), in order, without repeats; ValueError for a factor outside 0.5-2 or an empty list."""
    low, high = TTA_SCALE_RANGE
    if not scales or any(not low <= f <= high for f in scales):
        raise ValueError(f"TTA scales are factors of the input size from {low:g} to {high:g}, got {list(scales)}")
    sizes = [max(multiple, round(input_size * f / multiple) * multiple) if f != 1.0 else input_size for f in scales]
    return list(dict.fromkeys(sizes))


def _resize_channels(probs: np.ndarray, width: int, height: int) -> np.ndarray:
    """(C, h, w) float32 -> (C, height, width) float32, bilinear, each channel written straight into the result."""
    out = np.empty((probs.shape[0], height, width), np.float32)
    for p, dst in zip(probs, out):
        resized = cv2.resize(np.ascontiguousarray(p, dtype=np.float32), (width, height), dst=dst,
                             interpolation=cv2.INTER_LINEAR)
        if not np.shares_memory(resized, dst):  # cv2 allocated its own array: copy it in
            dst[...] = resized
    return out
