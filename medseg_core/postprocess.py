"""Post-processing as small pure steps on ``uint8`` class masks, chained by :func:`apply_postprocessing`.

Each step is ``(mask, probs) -> mask``; ``probs`` is the (C, H, W) class-probability map the mask came from
(steps that do not need it ignore it). A chain is a list of step names, stored in a model's config.

``postprocess`` means one thing at every door (``Segmenter``, the app, ``evaluate``, batch and the CLIs):
``"recorded"`` (the chain recorded in the weights' ``config.json``, chosen on a validation split; the default),
``"none"`` (raw masks), or an explicit list of step names. :func:`resolve_postprocess` turns it into steps.
:func:`refine` also needs the RGB image and a refiner network; :func:`apply_postprocessing` passes them (its
``image`` and ``refiner`` keyword arguments) to the steps whose signature asks for them.

"Lesion regions" are the 8-connected components of the foreground (any class > 0) throughout.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import cv2
import numpy as np

if TYPE_CHECKING:
    from .models import SegModel

__all__ = [
    "POSTPROCESSING_STEPS",
    "adaptive_kernel_size",
    "adaptive_morphology",
    "PostprocessSpec",
    "apply_postprocessing",
    "fill_holes",
    "headline_metric",
    "helpful_steps",
    "keep_largest_component",
    "refine",
    "refiner_input",
    "region_class_consistency",
    "remove_small_components",
    "resolve_postprocess",
]

log = logging.getLogger(__name__)


def _regions(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected lesion regions: count (background label 0 included), labels (H, W) int32, stats (n, 5)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return n, labels, stats


def _padded_box(stats_row: np.ndarray, pad: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    x, y, w, h = (int(v) for v in stats_row[:4])
    return (slice(max(0, y - pad), min(shape[0], y + h + pad)), slice(max(0, x - pad), min(shape[1], x + w + pad)))


def remove_small_components(mask: np.ndarray, probs: np.ndarray | None = None,
                            min_fraction: float = 0.001) -> np.ndarray:
    """Drop lesion regions smaller than ``min_fraction`` of the image area."""
    n, labels, stats = _regions(mask)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_fraction * mask.size)
    small = small[small != 0]
    out = mask.copy()
    if small.size:
        out[np.isin(labels, small)] = 0
    return out


def keep_largest_component(mask: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Keep only the largest lesion region (for images known to hold one lesion, e.g. single-image training)."""
    n, labels, stats = _regions(mask)
    if n <= 2:
        return mask.copy()
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == largest, mask, 0).astype(np.uint8)


def fill_holes(mask: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Fill background holes enclosed by a lesion; a hole takes the majority class of the ring around it.

    Background is taken 4-connected (the dual of the 8-connected foreground), so a hole is a background region
    that does not touch the image border.
    """
    fg = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - fg, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = np.setdiff1d(np.arange(1, n), border)
    out = mask.copy()
    if not holes.size:
        return out
    if mask.max() <= 1:  # binary: every hole becomes lesion, no ring to look at
        out[np.isin(labels, holes)] = 1
        return out
    ring_kernel = np.ones((3, 3), np.uint8)
    for hole in holes:
        # Work in the hole's bounding box (plus the ring) so the cost follows the hole, not the image.
        box = _padded_box(stats[hole], 1, mask.shape)
        region = labels[box] == hole
        ring = cv2.dilate(region.astype(np.uint8), ring_kernel).astype(bool) & ~region
        classes = mask[box][ring]
        classes = classes[classes > 0]
        out[box][region] = np.bincount(classes).argmax() if classes.size else 1
    return out


def adaptive_kernel_size(area: float, scale: float = 0.15, min_size: int = 3, max_size: int = 31) -> int:
    """Odd side of the elliptical kernel for a region of ``area`` pixels: ``scale * sqrt(area)``, clamped."""
    size = int(np.clip(round(scale * np.sqrt(max(area, 0.0))), min_size, max_size))
    return size if size % 2 else size + 1


def adaptive_morphology(mask: np.ndarray, probs: np.ndarray | None = None, scale: float = 0.15, min_size: int = 3,
                        max_size: int = 31) -> np.ndarray:
    """Opening then closing of each lesion region with an ellipse sized by :func:`adaptive_kernel_size`.

    Opening removes spurs and bridges thinner than the kernel; closing fills notches. Big regions get big
    kernels, so a small round lesion is smoothed with a small kernel instead of being erased. Pixels a region
    loses become background; pixels it gains (only background ones, never another region's) take the region's
    majority class.
    """
    n, labels, stats = _regions(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.array([adaptive_kernel_size(a, scale, min_size, max_size) for a in stats[:, cv2.CC_STAT_AREA]])
    # Opening is applied to all regions sharing a kernel size in one OpenCV call: regions are not 8-adjacent
    # and the ellipse is connected, so the opening of their union is the union of their openings.
    opened = np.zeros(mask.shape, bool)
    for k in np.unique(sizes[1:]):
        members = np.flatnonzero(sizes == k)
        members = members[members != 0]
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(k), int(k)))
        group = np.isin(labels, members).astype(np.uint8)
        opened |= cv2.morphologyEx(group, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    out = np.where(opened, mask, 0).astype(np.uint8)
    # Closing can join neighbours, so it runs per region, in the region's box padded by its kernel.
    majority = _majority_class(mask, labels, n)
    for r in range(1, n):
        k = int(sizes[r])
        box = _padded_box(stats[r], k, mask.shape)
        region = (labels[box] == r) & opened[box]
        if not region.any():
            continue
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        closed = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
        gained = closed & ~region & (out[box] == 0) & ((labels[box] == 0) | (labels[box] == r))
        out[box][gained] = majority[r]
    return out


def _majority_class(mask: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The most frequent class > 0 of every region (index = region label; 0 for the background label).

    A region with no pixel of class > 0 in ``mask`` gets class 1.
    """
    num_classes = max(2, int(mask.max()) + 1)
    counts = np.bincount(labels.ravel() * num_classes + mask.ravel(), minlength=n * num_classes)
    counts = counts.reshape(n, num_classes)
    counts[:, 0] = -1
    best = counts.argmax(1).astype(np.uint8)
    best[0] = 0
    return best


def _mass_class(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The foreground class with the most probability mass in every region (index = region label)."""
    if probs.shape[1:] != labels.shape:
        raise ValueError(f"probs {probs.shape} do not match the mask {labels.shape}")
    flat = labels.ravel()
    mass = np.stack([np.bincount(flat, weights=p.ravel(), minlength=n) for p in probs[1:]], axis=1)
    best = (1 + mass.argmax(1)).astype(np.uint8)
    best[0] = 0
    return best


def region_class_consistency(mask: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Give every lesion region one class: the one with the most probability mass inside it.

    The mass of class c in a region is the sum of ``probs[c]`` over its pixels, so a class that is confident over
    a large part of the region wins over one that takes more pixels by a thin margin. Without ``probs`` the
    majority class of the region's pixels wins. Binary masks are returned unchanged.
    """
    n, labels, _ = _regions(mask)
    if n <= 1 or (mask.max() <= 1 and (probs is None or probs.shape[0] <= 2)):
        return mask.copy()
    best = _majority_class(mask, labels, n) if probs is None else _mass_class(probs, labels, n)
    return best[labels].astype(np.uint8)


def refiner_input(image: np.ndarray, lesion_prob: np.ndarray, refiner: SegModel) -> np.ndarray:
    """The refiner's input for one crop: normalised RGB and the lesion probability, ``float32`` (4, H, W).

    The RGB channels are normalised with the refiner's ``mean`` / ``std``; the probability channel stays in [0, 1].
    """
    rgb = (image.astype(np.float32) / 255.0 - np.asarray(refiner.mean, np.float32)) / np.asarray(refiner.std,
                                                                                                   np.float32)
    return np.concatenate([rgb.transpose(2, 0, 1), lesion_prob[None].astype(np.float32)], axis=0)


def _lesion_prob(mask: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
    if probs is None:
        return (mask > 0).astype(np.float32)
    return (1.0 - probs[0]).astype(np.float32)


def refine(mask: np.ndarray, probs: np.ndarray | None, image: np.ndarray | None = None,
           refiner: SegModel | None = None, margin: float = 0.25, threshold: float = 0.5,
           batch_size: int = 16) -> np.ndarray:
    """Re-segment each lesion region with a refiner network (registered as ``refiner``) on a crop around it.

    Each region's bounding box, grown by ``margin`` of its longer side on every side, is cut from the image and
    the lesion probability (``1 - probs[0]``, or the mask itself without ``probs``), resized to the refiner's
    ``input_size`` and refined; the refined lesion probabilities are resized back and pasted in (averaged where
    crops overlap). Outside every crop the mask is unchanged. A refined lesion pixel takes the most probable
    foreground class of ``probs`` (multi-class), class 1 (binary), or, without ``probs``, its old class or the
    majority class of its new region.

    Args:
        mask: ``uint8`` class indices (H, W).
        probs: class probabilities (C, H, W) or None.
        image: the ``uint8`` RGB image (H, W, 3) the mask was predicted on.
        refiner: a model with 4 input channels (RGB + lesion probability) and 1 (sigmoid) or C (softmax) outputs.
        margin: context around each region, as a fraction of its box's longer side.
        threshold: refined lesion probability above which a pixel is lesion.
        batch_size: crops per forward pass.
    """
    import torch

    if image is None or refiner is None:
        raise ValueError("the 'refine' step needs the image and a refiner model (apply_postprocessing(..., "
                         "image=..., refiner=...))")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    if refiner.in_channels != 4:
        raise ValueError(f"the refiner must take 4 channels (RGB + lesion probability), not {refiner.in_channels}")
    n, labels, stats = _regions(mask)
    if n <= 1:
        return mask.copy()
    coarse = _lesion_prob(mask, probs)
    size = refiner.input_size
    boxes, crops = [], []
    for r in range(1, n):
        w, h = int(stats[r, cv2.CC_STAT_WIDTH]), int(stats[r, cv2.CC_STAT_HEIGHT])
        box = _padded_box(stats[r], int(round(margin * max(w, h))) + 2, mask.shape)
        img_crop = cv2.resize(image[box], (size, size), interpolation=cv2.INTER_LINEAR)
        prob_crop = cv2.resize(coarse[box], (size, size), interpolation=cv2.INTER_LINEAR)
        boxes.append(box)
        crops.append(refiner_input(img_crop, prob_crop, refiner))
    device = next(refiner.parameters()).device
    refined: list[np.ndarray] = []
    was_training = refiner.training
    refiner.eval()
    with torch.inference_mode():
        for i in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.stack(crops[i:i + batch_size])).to(device)
            logits = refiner(x).float()
            fg = logits[:, 0].sigmoid() if logits.shape[1] == 1 else 1.0 - logits.softmax(1)[:, 0]
            refined.extend(fg.cpu().numpy())
    refiner.train(was_training)
    total = np.zeros(mask.shape, np.float32)
    count = np.zeros(mask.shape, np.float32)
    for box, fg in zip(boxes, refined):
        h, w = total[box].shape
        total[box] += cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
        count[box] += 1
    touched = count > 0
    lesion = np.where(touched, total / np.maximum(count, 1) > threshold, mask > 0)
    return _assign_classes(mask, probs, lesion)


def _assign_classes(mask: np.ndarray, probs: np.ndarray | None, lesion: np.ndarray) -> np.ndarray:
    """Classes for a new lesion map: old lesion pixels keep theirs; new ones take their region's class.

    A region's class is the one with the most probability mass in it (multi-class ``probs``) or, without them,
    the majority class of its old pixels (class 1 when it has none).
    """
    if mask.max() <= 1 and (probs is None or probs.shape[0] <= 2):
        return lesion.astype(np.uint8)
    out = np.where(lesion, mask, 0).astype(np.uint8)
    new = lesion & (out == 0)
    if not new.any():
        return out
    n, labels, _ = _regions(lesion.astype(np.uint8))
    use_probs = probs is not None and probs.shape[0] > 2
    best = _mass_class(probs, labels, n) if use_probs else _majority_class(out, labels, n)
    out[new] = best[labels[new]]
    return out


POSTPROCESSING_STEPS: dict[str, Callable[..., np.ndarray]] = {
    "remove_small_components": remove_small_components,
    "keep_largest_component": keep_largest_component,
    "fill_holes": fill_holes,
    "adaptive_morphology": adaptive_morphology,
    "region_class_consistency": region_class_consistency,
    "refine": refine,
}


def apply_postprocessing(mask: np.ndarray, steps: Sequence[str], probs: np.ndarray | None = None, *,
                         image: np.ndarray | None = None, refiner: SegModel | None = None) -> np.ndarray:
    """Run the named steps in order; an unknown name raises ``ValueError``.

    ``image`` (``uint8`` RGB, H x W x 3) and ``refiner`` are passed only to the steps that take them (``refine``).
    """
    unknown = [s for s in steps if s not in POSTPROCESSING_STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step {unknown[0]!r}; choose from {sorted(POSTPROCESSING_STEPS)}")
    context: dict[str, Any] = {"image": image, "refiner": refiner}
    for name in steps:
        step = POSTPROCESSING_STEPS[name]
        params = inspect.signature(step).parameters
        mask = step(mask, probs, **{k: v for k, v in context.items() if k in params})
    return mask


#: ``"recorded"``, ``"none"`` or step names (see the module docstring).
PostprocessSpec: TypeAlias = Literal["recorded", "none"] | Sequence[str]


def resolve_postprocess(spec: PostprocessSpec | None, recorded: Sequence[str] = ()) -> tuple[str, ...]:
    """The steps a ``postprocess`` value stands for: ``"recorded"`` (or None) -> ``recorded``, ``"none"`` -> no
    steps, a list of step names -> those (a one-item list ``["recorded"]`` / ``["none"]``, as a command line gives
    it, means the word). Raises ``ValueError`` for unknown step names."""
    if spec is None:
        spec = "recorded"
    if not isinstance(spec, str) and len(spec) == 1 and spec[0] in ("recorded", "none"):
        spec = spec[0]
    if spec == "recorded":
        return tuple(recorded)
    if spec == "none":
        return ()
    if isinstance(spec, str):
        raise ValueError(f"postprocess must be 'recorded', 'none' or a list of step names; got {spec!r}")
    unknown = [s for s in spec if s not in POSTPROCESSING_STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step {unknown[0]!r}; choose 'recorded', 'none' or steps from "
                         f"{', '.join(POSTPROCESSING_STEPS)}")
    return tuple(spec)


def headline_metric(scores: dict[str, Any]) -> str:
    """The score a post-processing step must raise: the split-level ``class_dice`` where it was measured
    (multi-class models, as training selects them and the challenges score), else the per-image ``mdice``, else the
    lesion ``dice``."""
    return next(k for k in ("class_dice", "mdice", "dice") if k in scores)


def helpful_steps(table: dict[str, dict[str, Any]], chain: Sequence[str], min_gain: float) -> list[str]:
    """The steps of ``chain``, in order, that alone raise the headline score by at least ``min_gain``
    (nnU-Net's ``determine_postprocessing``): ``table[variant]["mean"]`` holds each variant's mean metrics on a
    validation split, ``"none"`` the raw masks'; the headline is :func:`headline_metric`."""
    headline = headline_metric(table["none"]["mean"])
    base = table["none"]["mean"][headline]
    return [step for step in chain if table[step]["mean"][headline] - base >= min_gain]
