"""albumentations pipelines for training and evaluation; normalisation comes from the model's config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from .enhance import stack_views

__all__ = ["TDCViews", "eval_transform", "train_transform"]


class TDCViews(A.ImageOnlyTransform):
    """uint8 RGB (H, W, 3) -> its TDC-Enhance views stacked on the channel axis, uint8 (H, W, 3*V).

    Placed after the augmentations and before ``Normalize``, so every view of a sample sees the same flips,
    crops and colour changes (DynaSiam's input, see ``medseg_core.enhance.stack_views``).
    """

    def __init__(self, views: Sequence[str], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.views = tuple(views)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return stack_views(img, self.views)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("views",)


def _normalise(mean: Sequence[float], std: Sequence[float], views: Sequence[str] | None) -> list:
    if not views:
        return [A.Normalize(mean=mean, std=std, max_pixel_value=255.0)]
    # One RGB normalisation, repeated for each stacked view.
    n = len(views)
    return [TDCViews(views), A.Normalize(mean=list(mean) * n, std=list(std) * n, max_pixel_value=255.0)]


def train_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float], strength: float = 1.0,
    views: Sequence[str] | None = None,
) -> A.Compose:
    """Geometric (flips, 90° rotations, shift-scale-rotate) and photometric (colour, gamma, blur) augmentation,
    plus coarse dropout. ``strength`` scales the probabilities (0 turns augmentation off). With ``views`` (a
    multi-view model's), the augmented image becomes its stacked TDC-Enhance views before normalisation."""
    p = max(0.0, min(1.0, strength))
    return A.Compose(
        [
            A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR),
            A.HorizontalFlip(p=0.5 * p),
            A.VerticalFlip(p=0.5 * p),
            A.RandomRotate90(p=0.5 * p),
            A.Affine(
                scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), rotate=(-30, 30),
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7 * p,
            ),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15, hue=0.02, p=0.6 * p),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3 * p),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2 * p),
            A.CoarseDropout(
                num_holes_range=(1, 4), hole_height_range=(0.04, 0.12), hole_width_range=(0.04, 0.12),
                fill=0, fill_mask=None, p=0.3 * p,
            ),
            *_normalise(mean, std, views),
            ToTensorV2(),
        ]
    )


def eval_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float], views: Sequence[str] | None = None
) -> A.Compose:
    """Resize to the model's input and normalise (after stacking the TDC-Enhance ``views``, when given)."""
    return A.Compose(
        [
            A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR),
            *_normalise(mean, std, views),
            ToTensorV2(),
        ]
    )
