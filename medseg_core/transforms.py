"""albumentations pipelines for training and evaluation; normalisation comes from the model's config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from .enhance import stack_views

__all__ = ["LesionFreeCrop", "TDCViews", "eval_transform", "train_transform"]


class LesionFreeCrop(A.DualTransform):
    """Crop a part of the image with no lesion pixel in its mask: a negative example, so the network also sees
    tissue it must leave unmarked (endoscopy frames without a polyp are common in practice; training sets rarely
    hold any). The crop is square, ``scale`` of the shorter side; up to ``attempts`` random positions are tried and
    the sample is left as it is when none is lesion-free. Placed before ``Resize``.
    """

    def __init__(self, scale: tuple[float, float] = (0.3, 0.6), attempts: int = 10, p: float = 0.1) -> None:
        super().__init__(p=p)
        self.scale = tuple(scale)
        self.attempts = attempts

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        mask = data["mask"]
        h, w = mask.shape[:2]
        for _ in range(self.attempts):
            side = int(min(h, w) * self.py_random.uniform(*self.scale))
            if side < 8:
                break
            y, x = self.py_random.randint(0, h - side), self.py_random.randint(0, w - side)
            if not mask[y:y + side, x:x + side].any():
                return {"box": (y, x, side)}
        return {"box": None}

    def apply(self, img: np.ndarray, box: tuple[int, int, int] | None = None, **params: Any) -> np.ndarray:
        if box is None:
            return img
        y, x, side = box
        return np.ascontiguousarray(img[y:y + side, x:x + side])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int] | None = None, **params: Any) -> np.ndarray:
        return self.apply(mask, box)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "attempts")


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
    views: Sequence[str] | None = None, colour: float = 1.0, negative_crops: float = 0.0, preset: str = "full",
) -> A.Compose:
    """Geometric (flips, 90° rotations, shift-scale-rotate) and photometric (colour, gamma, blur) augmentation,
    plus coarse dropout. ``strength`` scales the probabilities (0 turns augmentation off); ``colour`` scales the
    ranges of the colour jitter and gamma (2: brightness and contrast ±0.4, saturation ±0.3, hue ±0.04, gamma
    0.6-1.4); ``negative_crops`` is the probability of a lesion-free crop (:class:`LesionFreeCrop`). With ``views``
    (a multi-view model's), the augmented image becomes its stacked TDC-Enhance views before normalisation.
    ``preset="flips"``: horizontal and vertical flips and a random multiple of 90° only (the plain loop of
    ``shared/peers.md``), scaled by ``strength`` the same way."""
    p = max(0.0, min(1.0, strength))
    c = max(0.0, colour)
    if preset == "flips":
        return A.Compose([
            A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR),
            A.HorizontalFlip(p=0.5 * p), A.VerticalFlip(p=0.5 * p), A.RandomRotate90(p=p),
            *_normalise(mean, std, views), ToTensorV2(),
        ])
    if preset != "full":
        raise ValueError(f"unknown augmentation preset {preset!r}; choose full or flips")
    return A.Compose(
        [
            *([LesionFreeCrop(p=min(1.0, negative_crops) * p)] if negative_crops > 0 else []),
            A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR),
            A.HorizontalFlip(p=0.5 * p),
            A.VerticalFlip(p=0.5 * p),
            A.RandomRotate90(p=0.5 * p),
            A.Affine(
                scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), rotate=(-30, 30),
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7 * p,
            ),
            A.ColorJitter(brightness=0.2 * c, contrast=0.2 * c, saturation=0.15 * c, hue=min(0.5, 0.02 * c),
                          p=0.6 * p if c else 0.0),
            A.RandomGamma(gamma_limit=(100 - 20 * c, 100 + 20 * c), p=0.3 * p if c else 0.0),
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
