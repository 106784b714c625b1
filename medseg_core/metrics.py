"""Segmentation metrics: pure per-image functions and an accumulator.

Masks are integer class maps (H, W); class 0 is background. The binary "lesion" metrics compare ``pred > 0``
with ``target > 0``. For multi-class masks, per-class Dice and IoU are added for every foreground class.

Empty cases are defined, never NaN: when a ratio's denominator is zero (nothing predicted and nothing true for
it), the metric is 1.0 if both prediction and ground truth are empty, else 0.0. HD95 is 0.0 when both are
empty and the image diagonal (the largest distance possible) when exactly one is empty, so a missed or
hallucinated lesion is penalised rather than dropped from the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "BINARY_METRICS",
    "SegMetrics",
    "binary_metrics",
    "dice_score",
    "hd95",
    "iou_score",
    "lesion_free_summary",
    "per_class_metrics",
    "class_pixel_counts",
    "class_planes",
    "segmentation_metrics",
    "split_class_dice",
    "threshold_sweep_dice",
]

BINARY_METRICS = ("dice", "iou", "accuracy", "precision", "recall", "hd95")


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num) / float(den)


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape."""
    pred, target = pred.astype(bool), target.astype(bool)
    inter = np.logical_and(pred, target).sum()
    total = pred.sum() + target.sum()
    return _ratio(2 * inter, total, total == 0)


def iou_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    pred, target = pred.astype(bool), target.astype(bool)
    inter = np.logical_and(pred, target).sum()
    union = np.logical_or(pred, target).sum()
    return _ratio(inter, union, union == 0)


def _edges(mask: np.ndarray) -> np.ndarray:
    # The boundary is the mask minus its erosion (4-connected), as MONAI's get_mask_edges defines it.
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance between mask boundaries, in pixels.

    The larger of the two directed 95th percentiles (MONAI's ``compute_hausdorff_distance(percentile=95)``).
    """
    pred, target = pred.astype(bool), target.astype(bool)
    has_p, has_t = pred.any(), target.any()
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float(math.hypot(*pred.shape))
    edge_p, edge_t = _edges(pred), _edges(target)
    # distance_transform_edt gives each pixel's distance to the nearest zero, so invert the edge maps.
    dist_to_t = ndimage.distance_transform_edt(~edge_t)
    dist_to_p = ndimage.distance_transform_edt(~edge_p)
    return float(max(np.percentile(dist_to_t[edge_p], 95), np.percentile(dist_to_p[edge_t], 95)))


def binary_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Dice, IoU, accuracy, precision, recall and HD95 of the lesion (non-zero) region of two masks."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {target.shape} differ in shape")
    p, t = pred > 0, target > 0
    tp = int(np.logical_and(p, t).sum())
    fp = int(p.sum()) - tp
    fn = int(t.sum()) - tp
    both_empty = tp + fp + fn == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "accuracy": float((p == t).mean()),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "hd95": hd95(p, t),
    }


def class_planes(mask: np.ndarray, count: int, multilabel: bool) -> list[np.ndarray]:
    """Boolean maps of foreground classes: ``mask == c`` for class indices (H, W), ``mask[k]`` for 0/1 stacks."""
    return [mask[k] > 0 for k in range(count)] if multilabel else [mask == c for c in range(1, count + 1)]


def _names(num_classes: int | None, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    if num_classes is None:
        raise ValueError("give num_classes or class_names")
    return [str(c) for c in range(1, num_classes)]


def per_class_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int | None = None,
                      class_names: Sequence[str] | None = None, multilabel: bool = False) -> dict[str, float]:
    """Dice and IoU of every foreground class and their means (``mdice``, ``miou``).

    Keys are ``dice_<name>`` / ``iou_<name>`` with the foreground ``class_names`` (``dice_1``, ``dice_2`` ... by
    index when none are given). ``pred``/``target`` hold class indices (H, W), or 0/1 stacks (K, H, W) when
    ``multilabel``. A class absent from both counts 1.0 in an image (the module's empty-case rule).
    """
    names = _names(num_classes, class_names)
    out: dict[str, float] = {}
    k = len(names)
    for name, p, t in zip(names, class_planes(pred, k, multilabel), class_planes(target, k, multilabel)):
        out[f"dice_{name}"] = dice_score(p, t)
        out[f"iou_{name}"] = iou_score(p, t)
    out["mdice"] = float(np.mean([out[f"dice_{n}"] for n in names]))
    out["miou"] = float(np.mean([out[f"iou_{n}"] for n in names]))
    return out


def segmentation_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int = 2,
                         class_names: Sequence[str] | None = None, multilabel: bool = False) -> dict[str, float]:
    """All metrics of one image: the binary lesion metrics (any class against background), plus per-class ones
    for multi-class (``num_classes > 2`` or more than one foreground name) and multi-label masks."""
    lesion_p, lesion_t = (pred.any(axis=0), target.any(axis=0)) if multilabel else (pred, target)
    out = binary_metrics(lesion_p, lesion_t)
    names = _names(num_classes, class_names)
    if multilabel or len(names) > 1:
        out.update(per_class_metrics(pred, target, class_names=names, multilabel=multilabel))
    return out


def class_pixel_counts(pred: np.ndarray, target: np.ndarray, num_classes: int | None = None,
                       class_names: Sequence[str] | None = None, multilabel: bool = False) -> dict[str, int]:
    """Per foreground class: ``n_inter_<name>`` (pixels both call that class) and ``n_total_<name>`` (pixels either
    calls it, counted twice where both do), the sums behind :func:`split_class_dice`."""
    names = _names(num_classes, class_names)
    out: dict[str, int] = {}
    k = len(names)
    for name, p, t in zip(names, class_planes(pred, k, multilabel), class_planes(target, k, multilabel)):
        out[f"n_inter_{name}"] = int((p & t).sum())
        out[f"n_total_{name}"] = int(p.sum() + t.sum())
    return out


def split_class_dice(rows: Sequence[dict[str, float | str]]) -> dict[str, float]:
    """Split-level Dice of each foreground class: the pixel counts of :func:`class_pixel_counts` summed over all
    images first, the way the challenges score (``class_dice_<name>``), and their mean (``class_dice``).

    Unlike the per-image mean, a class absent from an image adds nothing here, so predicting too little is not
    rewarded with a perfect 1.0. Empty for rows without counts (binary models).
    """
    names = [str(k)[len("n_inter_"):] for k in (rows[0] if rows else {}) if str(k).startswith("n_inter_")]
    out = {f"class_dice_{n}": 2 * sum(r[f"n_inter_{n}"] for r in rows) / max(1, sum(r[f"n_total_{n}"] for r in rows))
           for n in names}
    if out:
        out["class_dice"] = sum(out.values()) / len(out)
    return out


def lesion_free_summary(rows: Sequence[dict[str, float | str]]) -> dict[str, float]:
    """For a split holding images without any lesion (PolypGen's negative frames): how many there are
    (``lesion_free_images``), on how many the model drew a lesion anyway (``false_alarms``), and the mean lesion
    Dice over the images that do hold one (``dice_lesion_images``). Read from the ``n_lesion_truth`` /
    ``n_lesion_pred`` pixel counts of each row; empty when every image holds a lesion or the rows lack the counts.

    A lesion-free image scores Dice 1 when nothing is drawn and 0 for any drawn pixel, so a few such images move the
    split's mean Dice by much more than their share of pixels; these figures say how much of the mean is that.
    """
    if not rows or "n_lesion_truth" not in rows[0]:
        return {}
    free = [r for r in rows if not r["n_lesion_truth"]]
    held = [r for r in rows if r["n_lesion_truth"]]
    if not free:
        return {}
    out = {"lesion_free_images": len(free), "false_alarms": sum(1 for r in free if r["n_lesion_pred"])}
    if held:
        out["dice_lesion_images"] = float(np.mean([r["dice"] for r in held]))
    return out


def threshold_sweep_dice(prob: np.ndarray, target: np.ndarray) -> float:
    """PraNet-protocol "mean Dice": Dice averaged over the 256 thresholds 0..255 of an 8-bit probability map.

    Quote it only beside PraNet-protocol papers, and label it so; our own figures use threshold 0.5.
    """
    prob8 = np.clip(np.round(prob * 255), 0, 255).astype(np.uint8)
    t = target > 0
    return float(np.mean([dice_score(prob8 > th, t) for th in range(256)]))


class SegMetrics:
    """Accumulates per-image metrics and averages them over images (MONAI's update/aggregate/reset).

    In a distributed run, gather the ``per_image`` lists of every process and average those, never the
    per-process means.
    """

    def __init__(self, num_classes: int = 2) -> None:
        self.num_classes = num_classes
        self.per_image: list[dict[str, float | str]] = []

    def update(self, pred: np.ndarray, target: np.ndarray, image_id: str | None = None) -> dict[str, float]:
        scores = segmentation_metrics(pred, target, self.num_classes)
        row: dict[str, float | str] = {"id": image_id} if image_id is not None else {}
        row.update(scores)
        self.per_image.append(row)
        return scores

    def extend(self, rows: Sequence[dict[str, float | str]]) -> None:
        self.per_image.extend(rows)

    def aggregate(self) -> dict[str, float]:
        return mean_metrics(self.per_image)

    def reset(self) -> None:
        self.per_image = []


def mean_metrics(rows: Sequence[dict[str, float | str]]) -> dict[str, float]:
    """Mean of every numeric metric over a list of per-image rows."""
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
