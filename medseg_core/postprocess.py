"""Post-processing as small pure steps on ``uint8`` class masks, chained by :func:`apply_postprocessing`.

Each step is ``(mask, probs) -> mask``; ``probs`` is the (C, H, W) class-probability map the mask came from
(steps that do not need it ignore it). A chain is a list of step names, stored in a model's config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

__all__ = ["POSTPROCESSING_STEPS", "apply_postprocessing", "fill_holes", "remove_small_components"]


def remove_small_components(mask: np.ndarray, probs: np.ndarray | None = None, min_fraction: float = 0.001) -> np.ndarray:
    """Drop lesion components (8-connected, any foreground class) smaller than ``min_fraction`` of the image."""
    fg = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    min_area = min_fraction * mask.size
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    small = small[small != 0]
    out = mask.copy()
    if small.size:
        out[np.isin(labels, small)] = 0
    return out


def fill_holes(mask: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Fill background holes enclosed by a lesion; a hole takes the class of the lesion pixels around it."""
    fg = (mask > 0).astype(np.uint8)
    n, labels = cv2.connectedComponents(1 - fg, connectivity=4)
    out = mask.copy()
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    for hole in range(1, n):
        if hole in border:
            continue
        region = labels == hole
        ring = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~region
        classes = mask[ring]
        classes = classes[classes > 0]
        out[region] = np.bincount(classes).argmax() if classes.size else 1
    return out


POSTPROCESSING_STEPS: dict[str, Callable[..., np.ndarray]] = {
    "remove_small_components": remove_small_components,
    "fill_holes": fill_holes,
}


def apply_postprocessing(mask: np.ndarray, steps: Sequence[str], probs: np.ndarray | None = None) -> np.ndarray:
    """Run the named steps in order; an unknown name raises ``ValueError``."""
    for name in steps:
        if name not in POSTPROCESSING_STEPS:
            raise ValueError(f"unknown post-processing step {name!r}; choose from {sorted(POSTPROCESSING_STEPS)}")
        mask = POSTPROCESSING_STEPS[name](mask, probs)
    return mask
