"""Is there a lesion in this frame? The image-level decision every door applies, and how it is measured.

A segmentation model draws something on almost any frame; most endoscopy frames hold no lesion. The decision here
reads each predicted lesion (an 8-connected region of the mask, any class) and keeps it only when its score (the
``mean`` or the ``peak`` lesion confidence inside it) reaches ``threshold`` and it covers at least ``min_area`` of
the image. A frame is "lesion present" when one region is kept; its score is the best score of the regions large
enough to count (0 when there are none). The rule is chosen on validation splits (``medseg-calibrate --what
presence``) and recorded in the weights' ``config.json`` under ``"presence"``, the way the post-processing chain is.

Measured over a split (:func:`presence_metrics`):

- frame specificity: the share of lesion-free frames on which nothing is kept;
- per-lesion sensitivity: the share of ground-truth lesions (8-connected regions of at least
  :data:`MIN_TRUTH_AREA` of the image, so that one-pixel specks of a JPEG-saved mask do not count) that a kept
  region touches;
- false-positive regions per lesion-free frame.

Every figure at any operating point comes from the per-image region records of :func:`region_records`, so a sweep
(:func:`presence_sweep`) costs no further inference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import scipy.ndimage as ndi

__all__ = [
    "MIN_TRUTH_AREA",
    "PRESENCE_SCORES",
    "PresenceRule",
    "apply_presence",
    "choose_presence",
    "presence_metrics",
    "presence_sweep",
    "region_records",
    "regions",
]

#: Region scores a rule can read: the mean or the peak lesion confidence inside a region.
PRESENCE_SCORES = ("mean", "peak")

#: Ground-truth regions smaller than this share of the image are not counted as lesions (annotation specks).
MIN_TRUTH_AREA = 0.001


@dataclass(frozen=True)
class PresenceRule:
    """Keep a predicted region when its ``score`` (``mean`` or ``peak`` confidence) is at least ``threshold`` and
    its area is at least ``min_area`` (a fraction of the image). ``PresenceRule()`` keeps every region."""

    score: str = "mean"
    threshold: float = 0.0
    min_area: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in PRESENCE_SCORES:
            raise ValueError(f"presence.score must be one of {', '.join(PRESENCE_SCORES)}; got {self.score!r}")
        for key, value in (("threshold", self.threshold), ("min_area", self.min_area)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0.0 <= value <= 1.0:
                raise ValueError(f"presence.{key} must be a number from 0 to 1; got {value!r}")

    @classmethod
    def from_config(cls, value: Any) -> PresenceRule:
        """The rule recorded in a ``config.json`` (``{"score", "threshold", "min_area"}`` plus any notes under
        other keys, e.g. ``"chosen_on"``); ValueError naming the field when it is malformed."""
        if not isinstance(value, Mapping):
            raise ValueError(f"presence must be an object with score, threshold and min_area; got {value!r}")
        missing = [k for k in ("score", "threshold", "min_area") if k not in value]
        if missing:
            raise ValueError(f"presence lacks {', '.join(missing)}")
        return cls(value["score"], value["threshold"], value["min_area"])

    def to_config(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"{self.score} confidence >= {self.threshold:g}"
                + (f", area >= {100 * self.min_area:g} % of the image" if self.min_area else ""))


def regions(lesion: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The 8-connected regions of a boolean lesion mask (H, W): a label image (0 background, ``k`` region ``k``)
    and, per region, its ``area`` (fraction of the image), ``pixels``, ``mean`` and ``peak`` confidence."""
    count, labels = cv2.connectedComponents(lesion.astype(np.uint8), connectivity=8)
    if count <= 1:
        return labels, []
    index = np.arange(1, count)
    pixels = ndi.sum_labels(np.ones_like(confidence, dtype=np.float32), labels, index)
    means = ndi.mean(confidence, labels, index)
    peaks = ndi.maximum(confidence, labels, index)
    return labels, [{"area": float(p) / lesion.size, "pixels": int(p), "mean": float(m), "peak": float(k)}
                    for p, m, k in zip(pixels, means, peaks)]


def _kept(region: Mapping[str, float], rule: PresenceRule) -> bool:
    return region[rule.score] >= rule.threshold and region["area"] >= rule.min_area


def frame_score(found: Sequence[Mapping[str, float]], rule: PresenceRule) -> float:
    """A frame's presence score: the best ``rule.score`` of its regions large enough to count (0 when none)."""
    return max((r[rule.score] for r in found if r["area"] >= rule.min_area), default=0.0)


def apply_presence(mask: np.ndarray, confidence: np.ndarray, rule: PresenceRule | None
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """The mask with every region the rule does not keep erased, and the decision: ``lesion_present``, the frame's
    ``presence_score``, the rule's ``presence_threshold`` and ``presence_rule`` (None when there is no rule: every
    region is kept and the score is the best region's mean confidence). ``mask``: class indices (H, W) or a 0/1
    stack of overlapping classes (K, H, W), whose regions are those of any class."""
    lesion = mask.any(axis=0) if mask.ndim == 3 else mask > 0
    labels, found = regions(lesion, confidence)
    active = rule or PresenceRule()
    keep = [_kept(r, active) for r in found]
    if found and not all(keep):
        drop = np.isin(labels, [k + 1 for k, kept in enumerate(keep) if not kept])
        mask = mask.copy()
        if mask.ndim == 3:
            mask[:, drop] = 0
        else:
            mask[drop] = 0
    return mask, {
        "lesion_present": any(keep),
        "presence_score": round(frame_score(found, active), 4),
        "presence_threshold": rule.threshold if rule else None,
        "presence_rule": rule.describe() if rule else None,
        "regions_found": len(found),
        "regions_kept": int(sum(keep)),
    }


def region_records(mask: np.ndarray, confidence: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """What :func:`presence_metrics` needs of one image, from the mask before any presence decision: each predicted
    region as ``[area, mean, peak, pixels, pixels on a lesion]``, and for each ground-truth lesion (regions of at
    least :data:`MIN_TRUTH_AREA`) the indices of the predicted regions that touch it; ``truth_pixels``, all lesion
    pixels of the ground truth. ``mask``/``truth``: class indices (H, W) or 0/1 stacks (K, H, W)."""
    lesion = mask.any(axis=0) if mask.ndim == 3 else mask > 0
    target = truth.any(axis=0) if truth.ndim == 3 else truth > 0
    labels, found = regions(lesion, confidence)
    on_target = ndi.sum_labels(target, labels, np.arange(1, len(found) + 1)) if found else []
    count, truth_labels, stats, _ = cv2.connectedComponentsWithStats(target.astype(np.uint8), connectivity=8)
    lesions = []
    for k in range(1, count):
        if stats[k, cv2.CC_STAT_AREA] < MIN_TRUTH_AREA * target.size:
            continue
        touching = np.unique(labels[truth_labels == k])
        lesions.append([int(j) - 1 for j in touching if j > 0])
    return {
        "regions": [[round(r["area"], 6), round(r["mean"], 4), round(r["peak"], 4), r["pixels"], int(t)]
                    for r, t in zip(found, on_target)],
        "truth_lesions": lesions,
        "truth_pixels": int(target.sum()),
    }


def presence_metrics(records: Sequence[Mapping[str, Any]], rule: PresenceRule | None) -> dict[str, Any]:
    """Presence figures of a split at one rule, from :func:`region_records` of each image: ``frame_specificity``
    and ``false_alarm_frames`` over the lesion-free frames (when there are any), ``lesion_sensitivity`` over the
    ground-truth lesions (when there are any), ``fp_regions_per_free_frame``, ``fp_regions_per_frame`` (regions that
    touch no lesion, over all frames) and ``dice_at_rule``, the mean lesion Dice of the images with the rule
    applied (1 for an image where both masks are empty)."""
    rule = rule or PresenceRule()
    col = 1 if rule.score == "mean" else 2
    free = detected = lesions = alarms = fp_free = fp_all = 0
    dice = []
    for rec in records:
        kept = [r[col] >= rule.threshold and r[0] >= rule.min_area for r in rec["regions"]]
        inter = sum(r[4] for r, k in zip(rec["regions"], kept) if k)
        drawn = sum(r[3] for r, k in zip(rec["regions"], kept) if k)
        total = drawn + rec["truth_pixels"]
        dice.append(1.0 if total == 0 else 2 * inter / total)
        fp = sum(1 for r, k in zip(rec["regions"], kept) if k and r[4] == 0)
        fp_all += fp
        if rec["truth_pixels"] == 0:
            free += 1
            alarms += any(kept)
            fp_free += fp
        for touching in rec["truth_lesions"]:
            lesions += 1
            detected += any(kept[j] for j in touching)
    out: dict[str, Any] = {"frames": len(records), "lesion_free_frames": free, "truth_lesions": lesions,
                           "fp_regions_per_frame": fp_all / max(1, len(records)),
                           "dice_at_rule": float(np.mean(dice)) if dice else float("nan")}
    if free:
        out.update(false_alarm_frames=alarms, frame_specificity=1 - alarms / free,
                   fp_regions_per_free_frame=fp_free / free)
    if lesions:
        out.update(lesions_detected=detected, lesion_sensitivity=detected / lesions)
    return out


def presence_sweep(records: Sequence[Mapping[str, Any]], score: str = "mean", min_area: float = 0.0,
                   thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """:func:`presence_metrics` at each threshold (default: 0 to 1 in steps of 0.01, with the finer steps of
    0.99-0.999 where peak scores crowd), for one score and minimum area: the data behind the trade-off plot."""
    if thresholds is None:
        thresholds = [*np.round(np.arange(0.0, 0.99, 0.01), 2), *np.round(np.arange(0.99, 1.0, 0.001), 3)]
    return [{"threshold": float(t), **presence_metrics(records, PresenceRule(score, float(t), min_area))}
            for t in thresholds]


def choose_presence(records: Sequence[Mapping[str, Any]], specificity: float,
                    min_areas: Sequence[float] = (0.0, 0.001, 0.0025, 0.005, 0.01)) -> dict[str, Any]:
    """The rule with the highest per-lesion sensitivity among those whose frame specificity reaches
    ``specificity`` on the records (which must hold lesion-free frames and lesions), ties broken by higher
    specificity, then by the mean Dice at the rule, then by the lower threshold and area. Returns ``{"rule",
    "metrics", "candidates"}``; ValueError when no rule reaches the specificity or the records lack either kind."""
    if not any(r["truth_pixels"] == 0 for r in records) or not any(r["truth_lesions"] for r in records):
        raise ValueError("choosing a presence rule needs frames without a lesion and frames with one")
    best: tuple[tuple[float, ...], PresenceRule, dict[str, Any]] | None = None
    tried = 0
    for score in PRESENCE_SCORES:
        col = 1 if score == "mean" else 2
        # Thresholds a little below each region's score (3 decimals, rounded down), so that the recorded rule keeps
        # the same regions when it reads unrounded scores.
        values = sorted({0.0, *(math.floor(r[col] * 1000) / 1000 for rec in records for r in rec["regions"])})
        for min_area in min_areas:
            for t in values:
                rule = PresenceRule(score, float(t), float(min_area))
                m = presence_metrics(records, rule)
                tried += 1
                if m["frame_specificity"] < specificity:
                    continue
                key = (m["lesion_sensitivity"], m["frame_specificity"], m["dice_at_rule"], -t, -min_area)
                if best is None or key > best[0]:
                    best = (key, rule, m)
                break  # higher thresholds at this score and area only lose lesions
    if best is None:
        raise ValueError(f"no rule reaches a frame specificity of {specificity:g} on these images")
    return {"rule": best[1], "metrics": best[2], "candidates": tried}
