"""albumentations pipelines for training and evaluation; normalisation comes from the model's config."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

__all__ = ["eval_transform", "train_transform"]


def train_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float], strength: float = 1.0
) -> A.Compose:
    """Geometric (flips, 90° rotations, shift-scale-rotate) and photometric (colour, gamma, blur) augmentation,
    plus coarse dropout. ``strength`` scales the probabilities (0 turns augmentation off)."""
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
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def eval_transform(input_size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize to the model's input and normalise."""
    return A.Compose(
        [
            A.Resize(input_size, input_size, interpolation=cv2.INTER_LINEAR),
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )
