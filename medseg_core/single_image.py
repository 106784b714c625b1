"""One image, one network: segment a lesion from a single image and a clinician's rough region of interest.

The early oesophageal cancer (EEC-2022) "one image, one network" method (see also Li et al., "Single-Image-Based
Deep Learning for Segmentation of Early Esophageal Cancer Lesions", arXiv:2306.05912): a
clinician marks a rough ROI on the image; patches are sampled from that image alone (positives centred inside the
ROI, negatives centred outside it, beyond a margin band whose labels are left out), at several scales and with
geometric and photometric augmentation; a small network is trained on them and then segments the whole image.
No other patient's image is used, and the network is only ever applied to the image it was trained on.

Conventions:
    * The ROI is a binary image (white = the marked region) or a labelme JSON file (``shapes[].points``).
    * Complement rule: when the four corners of the ROI are white, the ROI marks normal tissue (the lesion
      covers most of the image), so the network learns "ROI-like" tissue and the lesion is the complement.
    * Training labels are per pixel: 1 in the ROI (eroded by a small inner margin), 0 outside the ROI dilated
      by the margin band, ignored in the band, where the rough marking says nothing reliable.
    * Every sampled patch (centre, side, scale, label) and the seed go to ``sampling.json`` beside the result,
      so a run can be checked and repeated.

    python -m medseg_core.single_image --image X.jpg --roi X_roi.png --out result/
    python -m medseg_core.single_image --images DIR --rois DIR --out results/   (batch, with a summary table)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .inference import make_overlay
from .io import IMAGE_EXTENSIONS, read_image
from .models import SegModel, create_model
from .postprocess import apply_postprocessing

__all__ = [
    "IGNORE",
    "MAX_ROI_JSON_BYTES",
    "SingleImageConfig",
    "SingleImageResult",
    "TrainingCancelled",
    "label_map",
    "read_roi",
    "roi_from_ground_truth",
    "roi_from_labelme",
    "roi_marks_normal",
    "sample_patches",
    "segment_single_image",
    "write_result",
]

log = logging.getLogger(__name__)

#: Label of pixels the loss ignores (the margin band, and anything warped in from outside the image).
IGNORE = 255

ProgressFn = Callable[..., Any]
#: Largest labelme JSON read as a ROI, and most points in all its shapes.
MAX_ROI_JSON_BYTES = 10_000_000
_MAX_ROI_POINTS = 100_000


class TrainingCancelled(RuntimeError):
    """Raised inside :func:`segment_single_image` when its ``cancel`` callable says the run is no longer wanted."""

#: The default network: U-Net on the ImageNet EfficientNet-Lite0 encoder with a narrow decoder.
SMALL_UNET: dict[str, Any] = {"encoder": "tf_efficientnet_lite0", "encoder_weights": "imagenet",
                              "decoder_channels": [32, 24, 16, 16, 8]}


@dataclass
class SingleImageConfig:
    """Settings of one run; written to ``sampling.json``.

    Args:
        max_side: the image is shrunk so its longer side is at most this for sampling, training and prediction;
            the mask comes back at the input resolution.
        patch_size: side of the patches the network trains on (pixels, after resizing).
        scales: patch sides, as fractions of the shorter side of the (shrunk) image.
        patches_per_scale: patches per scale and per label (positive and negative).
        inner_margin: the ROI is eroded by this fraction of the lesion's size (the square root of the area of
            the smaller of ROI and complement) before positives are sampled.
        outer_margin: width of the band around the ROI left out of training, as a fraction of the same size. A
            rough marking inside a lesion stops well short of its edge, so the band must reach past it: 0.5 was
            chosen on 4 ``polyp-val`` images with ``studies/single_image_eval.py``'s ROIs (mean Dice 0.73 against
            0.69 with 0.3).
        steps: optimiser steps (the run time is about proportional: the default 450 took 51-57 s of CPU time per
            image on one core of the development machine, for 384x288 to 480x480 images).
        batch_size: patches per step.
        lr: AdamW learning rate (cosine decay to zero).
        freeze_stages: early encoder stages (with the stem) kept at their ImageNet weights, in eval mode (only for
            pretrained timm EfficientNet-style encoders, ``conv_stem`` + ``blocks``); 0 (default) trains everything.
            Measured saving: about 10 % of the CPU time, with no consistent effect on Dice.
        arch: registry name of the network; ``model_kwargs`` go to ``create_model`` (None: :data:`SMALL_UNET` for
            ``unet``, the model's own defaults otherwise).
        threshold: probability above which a pixel belongs to the ROI's class.
        postprocess: post-processing step names applied to the final lesion mask.
        device: torch device.
        seed: seeds patch sampling, augmentation and weight initialisation.
    """

    max_side: int = 480
    patch_size: int = 64
    scales: tuple[float, ...] = (0.12, 0.2, 0.32)
    patches_per_scale: int = 64
    inner_margin: float = 0.05
    outer_margin: float = 0.5
    steps: int = 450
    batch_size: int = 16
    lr: float = 1e-3
    freeze_stages: int = 0
    arch: str = "unet"
    model_kwargs: dict[str, Any] | None = None
    threshold: float = 0.5
    postprocess: tuple[str, ...] = ("remove_small_components", "fill_holes", "keep_largest_component")
    device: str = "cpu"
    seed: int = 0


@dataclass
class SingleImageResult:
    """What :func:`segment_single_image` returns, at the input image's resolution (H, W).

    Attributes:
        mask: ``uint8`` lesion mask (H, W), 1 = lesion.
        probability: ``float32`` lesion probability (H, W).
        overlay: ``uint8`` RGB image with the lesion tinted and outlined.
        complement: True when the ROI marked normal tissue and the mask is the complement of its class.
        record: the sampling record written to ``sampling.json`` (config, seed, margins, patches, timing).
        seconds: wall time of the whole run.
        losses: training loss of every step.
    """

    mask: np.ndarray
    probability: np.ndarray
    overlay: np.ndarray
    complement: bool
    record: dict[str, Any]
    seconds: float
    losses: list[float] = field(default_factory=list)


# ---- ROI ---------------------------------------------------------------------------------------------------------

def _labelme_points(shape: Any, index: int, scale: tuple[float, float]) -> np.ndarray:
    """One shape's points as finite (N, 2) floats in image pixels, or ``ValueError`` naming the shape."""
    if not isinstance(shape, dict):
        raise ValueError(f"labelme shape {index} is not an object with 'points'")
    try:
        points = np.asarray(shape.get("points", []), np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"labelme shape {index} has points that are not [x, y] numbers") from err
    if points.size and (points.ndim != 2 or points.shape[1] != 2):
        raise ValueError(f"labelme shape {index} has points that are not [x, y] pairs")
    if not np.isfinite(points).all():
        raise ValueError(f"labelme shape {index} has a point that is not a finite number (NaN or infinity)")
    return points.reshape(-1, 2) * scale


def _labelme_side(data: dict[str, Any], key: str, default: int) -> float:
    value = data.get(key)
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"the labelme file's {key} must be a positive number, not {str(value)[:40]!r}")
    return float(value)


def roi_from_labelme(data: dict[str, Any], image_shape: Sequence[int]) -> np.ndarray:
    """A labelme annotation (``shapes[].points``) as a boolean ROI of ``image_shape`` (H, W).

    Polygons, rectangles and circles are filled; other shapes (lines, points) are skipped. When the file's
    ``imageHeight`` / ``imageWidth`` differ from the image, the points are scaled. Raises ``ValueError`` with the
    reason when the file is not a labelme object, a shape's points are not finite [x, y] numbers, or no shape
    gives an area.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    if not isinstance(data, dict):
        raise ValueError(f"the labelme file must hold a JSON object with a 'shapes' list, not a "
                         f"{type(data).__name__}")
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise ValueError("the labelme file has no 'shapes' list")
    sx = w / _labelme_side(data, "imageWidth", w)
    sy = h / _labelme_side(data, "imageHeight", h)
    all_points = [_labelme_points(shape, i, (sx, sy)) for i, shape in enumerate(shapes)]
    if sum(len(p) for p in all_points) > _MAX_ROI_POINTS:
        raise ValueError(f"the labelme file has more than {_MAX_ROI_POINTS} points")
    roi = np.zeros((h, w), np.uint8)
    used = 0
    for shape, points in zip(shapes, all_points, strict=True):
        # Far-away points are clipped so OpenCV's integer maths cannot overflow.
        points = points.clip(-4 * max(h, w), 4 * max(h, w))
        kind = shape.get("shape_type") or "polygon"
        if kind == "polygon" and len(points) >= 3:
            cv2.fillPoly(roi, [np.round(points).astype(np.int32)], 1)
        elif kind == "rectangle" and len(points) == 2:
            (x0, y0), (x1, y1) = np.round(points).astype(int)
            cv2.rectangle(roi, (min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)), 1, -1)
        elif kind == "circle" and len(points) == 2:
            centre, edge = points
            cv2.circle(roi, tuple(int(v) for v in np.round(centre)), int(round(np.hypot(*(edge - centre)))), 1, -1)
        else:
            log.warning("labelme shape %r (%s, %d points) gives no area; skipped", shape.get("label"), kind,
                        len(points))
            continue
        used += 1
    if not used or not roi.any():
        raise ValueError("the labelme file has no polygon, rectangle or circle with an area inside the image")
    return roi.astype(bool)


def _read_labelme(path: Path) -> Any:
    if path.stat().st_size > MAX_ROI_JSON_BYTES:
        raise ValueError(f"the ROI file {path.name} is larger than {MAX_ROI_JSON_BYTES // 1_000_000} MB")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"the ROI file {path.name} is not valid JSON ({err})") from err


def read_roi(path: str | os.PathLike, image_shape: Sequence[int], max_pixels: int = 40_000_000) -> np.ndarray:
    """A ROI file as a boolean mask of ``image_shape`` (H, W): a labelme ``.json`` or a binary image.

    In a binary image any channel above 127 is ROI. A ROI image of another size but the same aspect ratio is
    resized (nearest); another aspect ratio is an error. The image's size is read from its header and checked
    against ``max_pixels`` (and the 16383-px side limit) before anything is decoded.
    """
    from .safety import ImageTooLargeError, check_image_size, image_size_from_header

    path = Path(path)
    h, w = int(image_shape[0]), int(image_shape[1])
    if path.suffix.lower() == ".json":
        return roi_from_labelme(_read_labelme(path), (h, w))
    try:
        rw, rh = image_size_from_header(path)
    except ImageTooLargeError as err:
        raise ValueError(f"the ROI image {err}; the limit is {max_pixels / 1e6:.0f} MP") from err
    except ValueError as err:
        raise ValueError(f"cannot read {path.name} as a ROI image or labelme JSON") from err
    check_image_size(rw, rh, max_pixels, f"the ROI image {path.name}")
    data = np.fromfile(str(path), dtype=np.uint8)
    roi = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if roi is None:
        raise ValueError(f"cannot read {path.name} as a ROI image or labelme JSON")
    if roi.ndim == 3:
        roi = roi[..., :3].max(axis=2) if roi.shape[2] >= 3 else roi[..., 0]
    if roi.dtype != np.uint8:
        roi = (roi.astype(np.float64) / np.iinfo(roi.dtype).max * 255).astype(np.uint8)
    roi = roi > 127
    if roi.shape != (h, w):
        if abs(roi.shape[1] / roi.shape[0] - w / h) > 0.02:
            raise ValueError(f"the ROI is {roi.shape[1]}x{roi.shape[0]} but the image is {w}x{h}")
        roi = cv2.resize(roi.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    if not roi.any():
        raise ValueError(f"the ROI {path.name} is empty (no white pixel)")
    return roi


def roi_from_ground_truth(mask: np.ndarray, rng: np.random.Generator, erode: float = 0.25, points: int = 8
                          ) -> np.ndarray:
    """A rough ROI inside the lesion of a ground-truth mask, imitating a clinician's quick polygon (the evaluation's
    ROI rule, ``studies/single_image_eval.py``). Boolean (H, W).

    Rule: take the largest lesion region; erode it by ``erode`` x its equivalent radius (sqrt(area / pi)), halving
    the erosion until something is left; draw ``points`` points of the eroded outline at random; the ROI is their
    convex hull intersected with the eroded lesion (so a concave lesion's hull stays inside it). With fewer than
    three distinct points the eroded lesion itself is the ROI.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    if n < 2:
        raise ValueError("the ground truth has no lesion to mark")
    lesion = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    radius = int(round(erode * np.sqrt(lesion.sum() / np.pi)))
    eroded = lesion
    while radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        eroded = cv2.erode(lesion, kernel)
        if eroded.any():
            break
        radius //= 2
    if not eroded.any():
        eroded = lesion
    contours, _ = cv2.findContours(eroded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea).reshape(-1, 2)
    chosen = outline[rng.choice(len(outline), size=min(points, len(outline)), replace=False)]
    if len(np.unique(chosen, axis=0)) < 3:
        return eroded.astype(bool)
    hull = np.zeros_like(eroded)
    cv2.fillPoly(hull, [cv2.convexHull(chosen.astype(np.int32))], 1)
    roi = (hull & eroded).astype(bool)
    return roi if roi.any() else eroded.astype(bool)


def roi_marks_normal(roi: np.ndarray) -> bool:
    """The complement rule: True when all four corners of the ROI are set (the ROI marks normal tissue)."""
    return bool(roi[0, 0] and roi[0, -1] and roi[-1, 0] and roi[-1, -1])


# ---- sampling ----------------------------------------------------------------------------------------------------

def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def label_map(roi: np.ndarray, inner_margin: float, outer_margin: float) -> tuple[np.ndarray, dict[str, int]]:
    """Per-pixel training labels: 1 in the eroded ROI, 0 outside the dilated ROI, :data:`IGNORE` in the band.

    Margins are fractions of the lesion's size, ``sqrt(min(ROI area, complement area))``, so they suit both a
    small ROI inside a lesion and a large ROI of normal tissue around one. Returns the labels ``uint8`` (H, W) and
    the margins in pixels.
    """
    roi8 = roi.astype(np.uint8)
    size = math.sqrt(max(1, min(int(roi8.sum()), roi8.size - int(roi8.sum()))))
    inner, outer = int(round(inner_margin * size)), max(1, int(round(outer_margin * size)))
    core = cv2.erode(roi8, _disk(inner), borderType=cv2.BORDER_REPLICATE) if inner else roi8
    if not core.any():  # a thin ROI: the marking itself is the best we have
        core, inner = roi8, 0
    outside = cv2.dilate(roi8, _disk(outer), borderType=cv2.BORDER_REPLICATE) == 0
    while not outside.any() and outer > 1:  # a ROI covering nearly everything: narrow the band
        outer //= 2
        outside = cv2.dilate(roi8, _disk(outer), borderType=cv2.BORDER_REPLICATE) == 0
    if not outside.any():
        raise ValueError("the ROI leaves nothing outside it to learn the other class from")
    labels = np.full(roi.shape, IGNORE, np.uint8)
    labels[core > 0] = 1
    labels[outside] = 0
    return labels, {"inner_px": inner, "outer_px": outer}


def sample_patches(labels: np.ndarray, scales: Sequence[float], per_scale: int, rng: np.random.Generator
                   ) -> list[dict[str, Any]]:
    """Patch centres drawn uniformly from the positive (label 1) and negative (label 0) pixels, per scale.

    Each scale gets ``per_scale`` positive and ``per_scale`` negative patches of side ``scale * shorter side``.
    Returns records ``{"x", "y", "size", "scale", "label"}`` with ``label`` ``"positive"`` or ``"negative"``.
    """
    side = min(labels.shape)
    pools = {"positive": np.flatnonzero(labels == 1), "negative": np.flatnonzero(labels == 0)}
    for name, pool in pools.items():
        if not pool.size:
            raise ValueError(f"no pixel to centre {name} patches on")
    patches = []
    for scale in scales:
        size = max(8, int(round(scale * side)))
        for name, pool in pools.items():
            for flat in rng.choice(pool, size=per_scale, replace=pool.size < per_scale):
                y, x = divmod(int(flat), labels.shape[1])
                patches.append({"x": x, "y": y, "size": size, "scale": float(scale), "label": name})
    return patches


def _photometric(seed: int) -> A.Compose:
    return A.Compose(
        [
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.8),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
        ],
        seed=seed,
    )


def _warp_patch(image: np.ndarray, labels: np.ndarray, patch: dict[str, Any], out_size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented patch: the record's window, randomly rotated, rescaled (+-15 %), shifted and flipped."""
    angle = rng.uniform(-180, 180)
    zoom = out_size / (patch["size"] * rng.uniform(0.85, 1.15))
    shift = rng.uniform(-0.1, 0.1, size=2) * patch["size"]
    m = cv2.getRotationMatrix2D((patch["x"] + shift[0], patch["y"] + shift[1]), angle, zoom)
    m[:, 2] += out_size / 2 - np.array([patch["x"] + shift[0], patch["y"] + shift[1]])
    img = cv2.warpAffine(image, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    lab = cv2.warpAffine(labels, m, (out_size, out_size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=IGNORE)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


# ---- training and prediction -------------------------------------------------------------------------------------

def _build_model(config: SingleImageConfig) -> SegModel:
    kwargs = dict(config.model_kwargs) if config.model_kwargs is not None else (
        dict(SMALL_UNET) if config.arch == "unet" else {})
    return create_model(config.arch, num_classes=1, input_size=config.patch_size, **kwargs)


def _freeze_early_stages(model: SegModel, stages: int) -> list[torch.nn.Module]:
    """Freeze the stem and the first ``stages`` blocks of a pretrained EfficientNet-style encoder; returns them."""
    encoder = getattr(model, "encoder", None)
    pretrained = model.config.get("encoder_weights") == "imagenet"
    if stages <= 0 or encoder is None or not pretrained or not hasattr(encoder, "blocks"):
        return []
    frozen = [m for m in (getattr(encoder, "conv_stem", None), getattr(encoder, "bn1", None)) if m is not None]
    frozen += list(encoder.blocks)[:stages]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _normalise(images: np.ndarray, model: SegModel, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W)."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(model.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over the labelled pixels; logits (N, 1, H, W), labels (N, H, W) with IGNORE."""
    valid = (labels != IGNORE).float()
    target = (labels == 1).float()
    logit = logits[:, 0]
    bce = (F.binary_cross_entropy_with_logits(logit, target, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
    prob = logit.sigmoid() * valid
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + (target * valid).sum() + 1)
    return bce + dice


def _train(model: SegModel, image: np.ndarray, labels: np.ndarray, patches: list[dict[str, Any]],
           config: SingleImageConfig, progress: ProgressFn | None, show_progress: bool,
           cancel: Callable[[], bool] | None = None) -> list[float]:
    rng = np.random.default_rng(config.seed + 1)
    photometric = _photometric(config.seed)
    device = torch.device(config.device)
    frozen = _freeze_early_stages(model, config.freeze_stages)
    # channels_last: depthwise convolutions are several times faster in it on CPUs.
    model.to(device, memory_format=torch.channels_last).train()
    for module in frozen:
        module.eval()  # keep the ImageNet batch-norm statistics of the frozen stages
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / max(1, config.steps))))
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="single-image training", disable=not show_progress, leave=False)
    report_every = max(1, config.steps // 50)
    for step in bar:
        if cancel is not None and cancel():  # checked every step (~0.1 s) so a cancel stops the run promptly
            raise TrainingCancelled(f"single-image training cancelled at step {step} of {config.steps}")
        batch = [_warp_patch(image, labels, patches[i], config.patch_size, rng)
                 for i in rng.integers(0, len(patches), size=config.batch_size)]
        images = np.stack([photometric(image=img)["image"] for img, _ in batch])
        targets = torch.from_numpy(np.stack([lab for _, lab in batch])).to(device)
        loss = _loss(model(_normalise(images, model, device)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if progress is not None and (step % report_every == 0 or step == config.steps - 1):
            progress(0.05 + 0.85 * (step + 1) / config.steps, desc=f"training ({step + 1}/{config.steps} steps)")
    return losses


@torch.inference_mode()
def _predict(model: SegModel, image: np.ndarray, zooms: Sequence[float], device: torch.device) -> np.ndarray:
    """Probability (H, W) of the ROI's class: the mean over the training zooms of whole-image predictions."""
    model.eval()
    h, w = image.shape[:2]
    total = np.zeros((h, w), np.float32)
    for zoom in zooms:
        size = (max(32, int(round(w * zoom))), max(32, int(round(h * zoom))))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
        prob = model(_normalise(resized[None], model, device))[0, 0].sigmoid().cpu().numpy()
        total += cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    return total / len(zooms)


def segment_single_image(image: np.ndarray, roi: np.ndarray, config: SingleImageConfig | None = None,
                         progress: ProgressFn | None = None, show_progress: bool = True,
                         cancel: Callable[[], bool] | None = None) -> SingleImageResult:
    """Train a network on patches of one image, guided by a rough ROI, and segment that image's lesion.

    Args:
        image: ``uint8`` RGB (H, W, 3).
        roi: boolean (H, W): the clinician's marking (see :func:`read_roi`); with four white corners it marks
            normal tissue and the lesion is the complement.
        config: settings (defaults: about a minute of one CPU core for a 480 x 480 image).
        progress: called as ``progress(fraction, desc=...)`` while running (``gradio.Progress`` fits).
        show_progress: a tqdm bar on the training steps.
        cancel: asked before every training step and before segmenting; when it returns True the run stops with
            :class:`TrainingCancelled` (nothing is returned or written).
    """
    config = config or SingleImageConfig()
    start = time.perf_counter()
    if roi.shape != image.shape[:2]:
        raise ValueError(f"ROI {roi.shape} and image {image.shape[:2]} differ in size")
    if progress is not None:
        progress(0.0, desc="sampling patches")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    h, w = image.shape[:2]
    factor = min(1.0, config.max_side / max(h, w))
    work = cv2.resize(image, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA) \
        if factor < 1 else image
    work_roi = cv2.resize(roi.astype(np.uint8), work.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(bool) \
        if factor < 1 else roi.astype(bool)
    complement = roi_marks_normal(roi)
    if complement:
        log.info("the ROI's four corners are set: it marks normal tissue, the lesion is its complement")
    labels, margins = label_map(work_roi, config.inner_margin, config.outer_margin)
    patches = sample_patches(labels, config.scales, config.patches_per_scale, rng)
    model = _build_model(config)
    train_start = time.perf_counter()
    losses = _train(model, work, labels, patches, config, progress, show_progress, cancel)
    train_seconds = time.perf_counter() - train_start
    if cancel is not None and cancel():
        raise TrainingCancelled(f"single-image run cancelled after its {config.steps} training steps")
    if progress is not None:
        progress(0.92, desc="segmenting the image")
    zooms = sorted({config.patch_size / p["size"] for p in patches})
    roi_prob = _predict(model, work, zooms, torch.device(config.device))
    roi_prob = cv2.resize(roi_prob, (w, h), interpolation=cv2.INTER_LINEAR) if factor < 1 else roi_prob
    probability = (1.0 - roi_prob if complement else roi_prob).astype(np.float32)
    mask = (probability > config.threshold).astype(np.uint8)
    if config.postprocess:
        mask = apply_postprocessing(mask, config.postprocess)
    seconds = time.perf_counter() - start
    counts: dict[str, dict[str, int]] = {}
    for p in patches:
        counts.setdefault(str(p["scale"]), {"positive": 0, "negative": 0})[p["label"]] += 1
    record = {
        "method": "one image, one network (patches from this image only)",
        "seed": config.seed,
        "config": {**asdict(config), "model_kwargs": config.model_kwargs if config.model_kwargs is not None
                   else (SMALL_UNET if config.arch == "unet" else {})},
        "image_size": [w, h],
        "work_size": [work.shape[1], work.shape[0]],
        "complement": complement,
        "roi_pixels": int(roi.sum()),
        "margins": margins,
        "positive_means": "centre inside the (eroded) ROI" + (", i.e. normal tissue" if complement else ""),
        "negative_means": "centre outside the ROI dilated by the margin band",
        "counts_per_scale": counts,
        "patches": patches,
        "train": {"steps": config.steps, "seconds": round(train_seconds, 2), "first_loss": losses[0],
                  "final_loss": float(np.mean(losses[-10:]))},
        "seconds": round(seconds, 2),
        "lesion_percent": round(100.0 * float(mask.mean()), 3),
    }
    if progress is not None:
        progress(1.0, desc="done")
    return SingleImageResult(mask=mask, probability=probability, overlay=make_overlay(image, mask),
                             complement=complement, record=record, seconds=seconds, losses=losses)


def write_result(result: SingleImageResult, out_dir: str | os.PathLike, stem: str | None = None) -> dict[str, Path]:
    """Write ``mask.png`` (0 / 255), ``overlay.png`` and ``sampling.json`` into ``out_dir``.

    With ``stem`` (batch mode) they go to ``masks/<stem>.png``, ``overlays/<stem>.png`` and
    ``sampling/<stem>.json`` instead.
    """
    out = Path(out_dir)
    if stem is None:
        paths = {"mask": out / "mask.png", "overlay": out / "overlay.png", "sampling": out / "sampling.json"}
    else:
        paths = {"mask": out / "masks" / f"{stem}.png", "overlay": out / "overlays" / f"{stem}.png",
                 "sampling": out / "sampling" / f"{stem}.json"}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(paths["mask"]), result.mask * 255):
        raise OSError(f"could not write {paths['mask']}")
    if not cv2.imwrite(str(paths["overlay"]), cv2.cvtColor(result.overlay, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {paths['overlay']}")
    paths["sampling"].write_text(json.dumps(result.record, indent=1))
    return paths


# ---- command line ------------------------------------------------------------------------------------------------

def _find_roi(rois: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}_roi"):
        for ext in (".json", *IMAGE_EXTENSIONS):
            if (rois / f"{name}{ext}").is_file():
                return rois / f"{name}{ext}"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SingleImageConfig()
    p = argparse.ArgumentParser(
        prog="python -m medseg_core.single_image",
        description="One image, one network: train a small network on patches of one image, guided by a rough ROI "
        "(binary image or labelme JSON; four white corners = the ROI marks normal tissue), and segment that image.",
    )
    p.add_argument("--image", help="the image to segment")
    p.add_argument("--roi", help="its ROI: a binary image (white = marked) or a labelme .json")
    p.add_argument("--images", help="batch mode: a folder of images")
    p.add_argument("--rois", help="batch mode: a folder of ROIs named <stem>.png/.json or <stem>_roi.*")
    p.add_argument("--out", required=True, help="output folder (mask.png, overlay.png, sampling.json; in batch "
                   "mode masks/, overlays/, sampling/ and summary.csv)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--patch-size", type=int, default=defaults.patch_size, help="network input side")
    p.add_argument("--patches-per-scale", type=int, default=defaults.patches_per_scale)
    p.add_argument("--scales", type=float, nargs="+", default=list(defaults.scales),
                   help="patch sides as fractions of the image's shorter side")
    p.add_argument("--max-side", type=int, default=defaults.max_side, help="work resolution (longer side)")
    p.add_argument("--arch", default=defaults.arch, help="registry model name (default: a small U-Net)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--freeze-stages", type=int, default=defaults.freeze_stages,
                   help="early pretrained encoder stages left untrained (faster on a CPU); 0 trains all")
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    single, batch = bool(args.image or args.roi), bool(args.images or args.rois)
    if single == batch or (single and not (args.image and args.roi)) or (batch and not (args.images and args.rois)):
        p.error("give either --image and --roi, or --images and --rois")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the CLI; returns one summary row per image."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = SingleImageConfig(steps=args.steps, batch_size=args.batch_size, patch_size=args.patch_size,
                               patches_per_scale=args.patches_per_scale, scales=tuple(args.scales),
                               max_side=args.max_side, arch=args.arch, lr=args.lr, freeze_stages=args.freeze_stages,
                               device=args.device, seed=args.seed)
    if args.image:
        jobs = [(Path(args.image), Path(args.roi), None)]
    else:
        images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise SystemExit(f"no images in {args.images}")
        jobs = []
        for path in images:
            roi = _find_roi(Path(args.rois), path.stem)
            if roi is None:
                raise SystemExit(f"no ROI for {path.name} in {args.rois} (<stem>.json, <stem>.png or <stem>_roi.*)")
            jobs.append((path, roi, path.stem))
    rows = []
    for image_path, roi_path, stem in tqdm(jobs, desc="images", disable=len(jobs) == 1):
        image = read_image(image_path)
        result = segment_single_image(image, read_roi(roi_path, image.shape[:2]), config)
        paths = write_result(result, args.out, stem)
        rows.append({"image": image_path.name, "complement": result.complement,
                     "lesion_percent": result.record["lesion_percent"], "seconds": round(result.seconds, 1),
                     "final_loss": round(result.record["train"]["final_loss"], 4), "mask": str(paths["mask"])})
        note = " (ROI marks normal tissue: the mask is its complement)" if result.complement else ""
        print(f"{image_path.name}: lesion {result.record['lesion_percent']:.1f}% of the image, "
              f"{result.seconds:.1f} s{note} -> {paths['mask']}")
    if args.images:
        summary = Path(args.out) / "summary.csv"
        with open(summary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"{'image':<32}{'complement':>11}{'lesion %':>10}{'seconds':>9}{'loss':>8}")
        for r in rows:
            print(f"{r['image']:<32}{str(r['complement']):>11}{r['lesion_percent']:>10.2f}{r['seconds']:>9.1f}"
                  f"{r['final_loss']:>8.3f}")
        print(f"summary: {summary}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
