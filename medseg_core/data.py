"""Datasets: ``images/`` + ``masks/`` folders, the project's split files, and a user's own folder of pairs.

Images come out as ``uint8`` RGB ``(H, W, 3)``; masks as ``uint8`` class indices ``(H, W)``. OpenCV reads BGR,
so the conversion happens once, here, at the edge.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "SegDataset",
    "decode_mask",
    "pairs_from_folders",
    "read_image",
    "read_mask",
    "read_split",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MaskEncoding = Literal["binary", "neopolyp"]


@dataclass(frozen=True)
class Sample:
    """One image and its mask on disk; ``id`` is ``<dataset folder>/<file stem>`` as in the split files.

    ``prob`` is an optional coarse lesion-probability map (8-bit grey, 0..255) read as an extra input channel,
    e.g. the training crops of the refiner (``train/make_refiner_data.py``).
    """

    id: str
    image: Path
    mask: Path | None
    prob: Path | None = None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``uint8`` RGB (H, W, 3). Raises ``ValueError`` when the file is not a readable image."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"cannot read {path} as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a grey (H, W) or RGB (H, W, 3) ``uint8`` image as PNG (any path, non-ASCII included); returns the path.

    The one PNG writer of the package: masks, overlays, views and crops all go through it.
    """
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    buf.tofile(str(path))
    return Path(path)


def decode_mask(mask: np.ndarray, encoding: MaskEncoding = "binary") -> np.ndarray:
    """A mask image (grey or RGB, possibly JPEG-noisy) -> ``uint8`` class indices.

    ``binary``: any channel above 127 is lesion (1). ``neopolyp``: BKAI-IGH colours, red (R>127, G<128, B<128)
    is neoplastic (1), green (G>127, R<128, B<128) is non-neoplastic (2), everything else background.
    """
    if encoding == "binary":
        grey = mask if mask.ndim == 2 else mask.max(axis=2)
        return (grey > 127).astype(np.uint8)
    if encoding == "neopolyp":
        if mask.ndim != 3:
            raise ValueError("NeoPolyp masks are RGB colour images")
        r, g, b = (mask[..., i] for i in range(3))
        out = np.zeros(mask.shape[:2], np.uint8)
        out[(r > 127) & (g < 128) & (b < 128)] = 1
        out[(g > 127) & (r < 128) & (b < 128)] = 2
        return out
    raise ValueError(f"unknown mask encoding {encoding!r}")


def read_mask(path: str | os.PathLike, encoding: MaskEncoding = "binary") -> np.ndarray:
    """A mask file as ``uint8`` class indices (H, W)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise ValueError(f"cannot read {path} as a mask")
    if mask.ndim == 3:
        mask = cv2.cvtColor(mask[..., :3], cv2.COLOR_BGR2RGB)
    if mask.dtype != np.uint8:  # 16-bit masks: keep the 0..255 scale the thresholds expect
        mask = (mask.astype(np.float64) / np.iinfo(mask.dtype).max * 255).astype(np.uint8)
    return decode_mask(mask, encoding)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _find_mask(masks: dict[str, Path], stem: str) -> Path | None:
    # Most datasets name the mask like the image; PolypGen adds "_mask".
    return masks.get(stem) or masks.get(f"{stem}_mask")


def read_split(data_root: str | os.PathLike, split: str) -> list[Sample]:
    """The samples of a split file: ``<data_root>/splits/<split>.txt`` or a path to such a file.

    Each line is ``<dataset folder>/<image id>``; images are ``<folder>/images/<id>.*`` and masks
    ``<folder>/masks/<id>.*`` or ``<folder>/masks/<id>_mask.*``. When ``<folder>/probs/`` exists, every image
    needs a ``probs/<id>.png`` lesion-probability map there, which the dataset reads as a fourth channel.
    """
    root = Path(data_root)
    split_file = Path(split) if split.endswith(".txt") else root / "splits" / f"{split}.txt"
    if not split_file.is_file():
        known = sorted(p.stem for p in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
        raise FileNotFoundError(f"no split file {split_file}; known splits: {', '.join(known) or 'none'}")
    lines = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    index: dict[str, tuple[dict[str, Path], dict[str, Path], dict[str, Path] | None]] = {}
    samples = []
    for line in lines:
        folder, stem = line.split("/", 1)
        if folder not in index:
            probs_dir = root / folder / "probs"
            index[folder] = (_files_by_stem(root / folder / "images"), _files_by_stem(root / folder / "masks"),
                             _files_by_stem(probs_dir) if probs_dir.is_dir() else None)
        images, masks, probs = index[folder]
        if stem not in images:
            raise FileNotFoundError(f"split {split_file.name} names {line}, but there is no such image")
        mask = _find_mask(masks, stem)
        if mask is None:
            raise FileNotFoundError(f"split {split_file.name} names {line}, but it has no mask")
        if probs is not None and stem not in probs:
            raise FileNotFoundError(f"split {split_file.name} names {line}, but it has no probs/ map")
        samples.append(Sample(line, images[stem], mask, probs[stem] if probs is not None else None))
    return samples


def pairs_from_folders(images_dir: str | os.PathLike, masks_dir: str | os.PathLike | None = None) -> list[Sample]:
    """A user's own folder of images, paired by file stem with a folder of masks (``<stem>`` or ``<stem>_mask``).

    Images without a mask are an error when a mask folder is given; without one, masks are None (inference only).
    """
    images = _files_by_stem(Path(images_dir))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    masks = _files_by_stem(Path(masks_dir)) if masks_dir is not None else None
    samples = []
    for stem, path in images.items():
        if stem.endswith("_mask") and masks is None:
            continue
        mask = _find_mask(masks, stem) if masks is not None else None
        if masks is not None and mask is None:
            raise FileNotFoundError(f"image {path.name} has no mask in {masks_dir}")
        samples.append(Sample(stem, path, mask))
    return samples


def _fit_within(img: np.ndarray, max_side: int, interpolation: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=interpolation)


class SegDataset(Dataset):
    """Image/mask pairs through an albumentations transform.

    Args:
        samples: from :func:`read_split` or :func:`pairs_from_folders`.
        transform: an albumentations pipeline ending in ``ToTensorV2`` (see ``medseg_core.transforms``).
        mask_encoding: how mask files encode classes.
        cache_max_side: decode every pair once, shrunk so its longer side is at most this, and keep it in memory.
            Decoding full-size endoscopy JPEGs every epoch costs more than the model on a CPU.
        progress: show a progress bar while caching.

    Items are dicts: ``image`` float (3, H, W), ``mask`` long (H, W), ``id`` str. Samples with a ``prob`` map get a
    fourth image channel: the probability in [0, 1], moved with the geometric augmentations, never normalised.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        mask_encoding: MaskEncoding = "binary",
        cache_max_side: int | None = None,
        progress: bool = True,
    ) -> None:
        if not samples:
            raise ValueError("the dataset is empty")
        self.samples = list(samples)
        self.transform = transform
        self.mask_encoding = mask_encoding
        self.cache_max_side = cache_max_side
        self._cache: list[tuple[np.ndarray, ...]] | None = None
        if cache_max_side is not None:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                self._cache = list(
                    tqdm(pool.map(self._load, range(len(self.samples))), total=len(self.samples), desc="caching",
                         leave=False, disable=not progress)
                )

    def _load(self, i: int) -> tuple[np.ndarray, ...]:
        s = self.samples[i]
        if s.mask is None:
            raise ValueError(f"{s.id} has no mask")
        image, mask = read_image(s.image), read_mask(s.mask, self.mask_encoding)
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"{s.id}: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        prob = None
        if s.prob is not None:
            prob = cv2.imdecode(np.fromfile(str(s.prob), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
            if prob is None or prob.shape != mask.shape:
                raise ValueError(f"{s.id}: the probability map {s.prob} is unreadable or not the image's size")
        if self.cache_max_side is not None:
            image = _fit_within(image, self.cache_max_side, cv2.INTER_AREA)
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            if prob is not None:
                prob = cv2.resize(prob, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        return (image, mask) if prob is None else (image, mask, prob)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        image, mask, *prob = self._cache[i] if self._cache is not None else self._load(i)
        if self.transform is not None:
            # The probability map rides along as an extra mask: geometric transforms only, no normalisation.
            out = self.transform(image=image, mask=mask, **({"masks": prob} if prob else {}))
            image, mask, prob = out["image"], out["mask"], out.get("masks", [])
        else:
            image = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            mask = torch.from_numpy(mask)
            prob = [torch.from_numpy(p) for p in prob]
        if prob:
            image = torch.cat([image, torch.as_tensor(prob[0]).float()[None] / 255.0])
        return {"image": image, "mask": torch.as_tensor(mask).long(), "id": self.samples[i].id}


# UW-Madison GI tract MRI (Kaggle 2022): RLE masks of three organs in a CSV.

#: The competition's organ classes, in mask-index order (1, 2, 3); 0 is background.
UWMADISON_CLASSES: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """A Kaggle run-length encoding -> binary ``uint8`` mask (H, W).

    ``rle`` is ``"start length start length ..."`` with 1-based starts over the pixels numbered row-major (left to
    right, then top to bottom), as the UW-Madison GI tract competition encodes its masks. An empty string means an
    empty mask. Raises ``ValueError`` for an odd number of values, non-positive starts or lengths, or runs that
    leave the image.
    """
    h, w = (int(s) for s in shape)
    flat = np.zeros(h * w, np.uint8)
    values = rle.split() if isinstance(rle, str) else []
    if len(values) % 2:
        raise ValueError(f"an RLE needs start/length pairs, got {len(values)} numbers")
    try:
        pairs = np.asarray(values, dtype=np.int64).reshape(-1, 2)
    except ValueError as err:
        raise ValueError(f"an RLE holds integers only: {rle[:60]!r}") from err
    for start, length in pairs:
        if start < 1 or length < 1 or start - 1 + length > h * w:
            raise ValueError(f"run ({start}, {length}) does not fit a {h}x{w} image")
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(h, w)


def rle_encode(mask: np.ndarray) -> str:
    """Binary mask (H, W) -> the Kaggle run-length encoding :func:`rle_decode` reads (row-major, 1-based)."""
    flat = np.concatenate([[0], (np.asarray(mask).reshape(-1) > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat)) + 1  # 1-based positions where a run starts or ends
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def uwmadison_slice_info(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
    """The CSV id and the (height, width) of a competition slice file.

    ``.../case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png`` -> ``("case123_day20_slice_0001",
    (266, 266))``: the file name gives width, height and the pixel spacing, the parent of ``scans`` the case-day.
    """
    p = Path(path)
    parts = p.stem.split("_")
    if len(parts) != 6 or parts[0] != "slice":
        raise ValueError(f"{p.name} is not named slice_<n>_<width>_<height>_<dx>_<dy>")
    width, height = int(parts[2]), int(parts[3])
    return f"{p.parent.parent.name}_slice_{parts[1]}", (height, width)


def read_uwmadison_csv(
    csv_path: str | os.PathLike,
    shapes: tuple[int, int] | dict[str, tuple[int, int]],
    classes: Sequence[str] = UWMADISON_CLASSES,
) -> dict[str, np.ndarray]:
    """Per-slice multi-class masks from a UW-Madison ``train.csv`` (columns ``id``, ``class``, ``segmentation``).

    Args:
        csv_path: the CSV; an empty ``segmentation`` means the organ is absent from that slice.
        shapes: the (height, width) of every slice, or a dict id -> (height, width) (see
            :func:`uwmadison_slice_info`; the CSV itself does not record sizes).
        classes: the organ names in mask-index order; class ``classes[k]`` becomes index ``k + 1``.

    Returns:
        id -> ``uint8`` mask (H, W): 0 background, 1/2/3 large bowel / small bowel / stomach. Every id in the CSV
        is returned, slices without any organ as all-background masks.

    Organs may overlap in the annotations (bowel loops touching). A single-label mask needs one owner per pixel:
    the higher class index wins (stomach over small bowel over large bowel). Keep per-organ masks from
    :func:`rle_decode` where a multi-label target is wanted.
    """
    import csv  # only this reader needs it

    index = {name: k + 1 for k, name in enumerate(classes)}
    masks: dict[str, np.ndarray] = {}
    overlaps = 0
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "class", "segmentation"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path} lacks the column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    for row in rows:  # the ids in the CSV's order
        sid, organ = row["id"], row["class"]
        if organ not in index:
            raise ValueError(f"{csv_path}: unknown class {organ!r} for {sid}; expected one of {', '.join(classes)}")
        if sid not in masks:
            if isinstance(shapes, dict) and sid not in shapes:
                raise ValueError(f"no (height, width) given for {sid}")
            masks[sid] = np.zeros(shapes[sid] if isinstance(shapes, dict) else shapes, np.uint8)
    for row in sorted(rows, key=lambda r: index[r["class"]]):  # paint in class order, so the higher index wins
        sid, organ, rle = row["id"], row["class"], (row["segmentation"] or "").strip()
        if rle:
            region = rle_decode(rle, masks[sid].shape).astype(bool)
            overlaps += int((masks[sid][region] > 0).sum())
            masks[sid][region] = index[organ]
    if overlaps:
        log.debug("%s: %d pixels carry more than one organ; the higher class index was kept", csv_path, overlaps)
    return masks


__all__ += ["UWMADISON_CLASSES", "read_uwmadison_csv", "rle_decode", "rle_encode", "uwmadison_slice_info"]
