"""The one place that reads and writes images and masks.

Images come out as ``uint8`` RGB ``(H, W, 3)`` whatever the file holds: grey slices become three equal channels,
transparent areas black, and 16-bit or float images are windowed per image (0.5th to 99.5th percentile to 0..255),
the same rule in training (:func:`read_image`) and inference (:func:`to_rgb_uint8`, used by every door).

Masks come out as ``uint8`` class indices ``(H, W)`` (binary and multi-class), or, for multi-label schemas, as a
``uint8`` stack ``(K, H, W)`` of 0/1 per class. Mask encodings (:data:`medseg_core.labels.MASK_ENCODINGS`):

- ``binary``: grey or RGB, lesion where any channel is above 127; a mask whose values are all 0 or 1 holds
  class indices (the early-oesophageal-cancer data's ``{0, 1}`` PNGs) and is read as such.
- ``indexed``: pixel value = class index (``{0, 1, 2, ...}``).
- ``palette``: one colour per class (the schema's ``colours``); every pixel takes its nearest colour, so JPEG noise
  and interpolated edges decode (BKAI-IGH red/green, UW-Madison yellow/green/red).
- ``per_class_files``: one grey file per class present, ``<stem>_<class>.png`` (EDD2020; classes overlap).
- ``rle_csv``: ``id,class,segmentation`` rows of run-length encodings (UW-Madison); see :func:`read_rle_csv`.

OpenCV reads BGR: the conversion happens once, here.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .labels import LabelSchema

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "IMAGE_FORMAT_NAMES",
    "decode_mask",
    "mask_files",
    "read_image",
    "read_mask",
    "read_rle_csv",
    "rle_decode",
    "rle_encode",
    "rle_rows",
    "rle_stack",
    "slice_group",
    "to_rgb_uint8",
    "window_to_uint8",
    "write_mask",
    "write_png",
    "write_rle_csv",
]

#: The image formats every door accepts, as ``{name: extensions}``: the one list behind the messages that name them
#: (:data:`IMAGE_FORMAT_NAMES`), the app's upload widgets and folder and zip expansion (:data:`IMAGE_EXTENSIONS`).
#: Pillow (uploads) and OpenCV (folders, training data) both decode every one of them.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "TIFF": (".tif", ".tiff"),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "WebP": (".webp",),
}
IMAGE_EXTENSIONS = tuple(ext for exts in IMAGE_FORMATS.values() for ext in exts)
#: ``"PNG, JPEG, TIFF, BMP, GIF or WebP"``, for messages.
IMAGE_FORMAT_NAMES = ", ".join(list(IMAGE_FORMATS)[:-1]) + " or " + list(IMAGE_FORMATS)[-1]
WINDOW_PERCENTILES = (0.5, 99.5)
_NO_FINITE_PIXEL = "the image holds no finite value (every pixel is NaN or infinite); it cannot be shown or segmented"


# ---- images --------------------------------------------------------------------------------------------------------


def window_to_uint8(image: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """A 16-bit, 32-bit or float image -> ``uint8``: the ``percentiles`` of its finite values map to 0 and 255.

    Per image, so a grey MRI slice whose values reach 3000 fills the 8-bit range instead of keeping 11/255 of it.
    Non-finite pixels take the lowest level; an image with no finite pixel at all is refused (``ValueError``), not
    read as black.
    """
    top = float(np.iinfo(image.dtype).max) if np.issubdtype(np.asarray(image).dtype, np.integer) else None
    a = np.asarray(image, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise ValueError(_NO_FINITE_PIXEL)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:  # a flat image: its level on the dtype's scale (integers), else clipped to 0..255
        level = lo / top * 255 if top else lo
        return np.full(a.shape, int(np.clip(round(level), 0, 255)), np.uint8)
    return np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any common image array -> ``uint8`` RGB (H, W, 3).

    Accepts grey (H, W) or (H, W, 1), RGB, RGBA (composited over black), 16-bit and float (windowed by
    :func:`window_to_uint8`; floats within [0, 1] are scaled by 255), and bool. Raises ``ValueError`` for anything
    else (wrong rank, wrong channel count, empty).
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError("the image is empty")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a grey, RGB or RGBA image, got an array of shape {image.shape}")
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image[..., :3]).any():
            raise ValueError(_NO_FINITE_PIXEL)
        if np.issubdtype(image.dtype, np.floating) and np.nanmin(image) >= 0 and np.nanmax(image) <= 1.0:
            image = np.clip(np.nan_to_num(image) * 255, 0, 255).round().astype(np.uint8)
        elif np.issubdtype(image.dtype, np.number):
            alpha = image[..., 3:]
            rgb = window_to_uint8(image[..., :3])
            if alpha.size:  # alpha keeps its own scale: fully opaque is the dtype's maximum
                top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
                alpha = np.clip(alpha.astype(np.float64) / top * 255, 0, 255).astype(np.uint8)
            image = np.concatenate([rgb, alpha], axis=2) if alpha.size else rgb
        else:
            raise ValueError(f"unsupported image dtype {image.dtype}")
    if image.shape[2] == 4:  # transparent areas become black, as an endoscopy frame's background usually is
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = (image[..., :3].astype(np.float32) * alpha).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``uint8`` RGB (H, W, 3) (any path, non-ASCII included). Raises ``ValueError`` when the file
    is not a readable image."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if img is None:
        raise ValueError(f"cannot read {path} as an image")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return to_rgb_uint8(img)


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


# ---- masks ---------------------------------------------------------------------------------------------------------


def _read_raw(path: str | os.PathLike) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if mask is None:
        raise ValueError(f"cannot read {path} as a mask")
    if mask.ndim == 3:
        mask = cv2.cvtColor(mask[..., :3], cv2.COLOR_BGR2RGB)
    return mask


def _nearest_colour(mask: np.ndarray, colours: Sequence[Sequence[int]]) -> np.ndarray:
    rgb = mask if mask.ndim == 3 else np.stack([mask] * 3, axis=-1)
    palette = np.asarray(colours, np.int32)  # (C, 3)
    best = np.zeros(rgb.shape[:2], np.uint8)
    best_d = np.full(rgb.shape[:2], np.iinfo(np.int32).max, np.int64)
    for c, colour in enumerate(palette):  # one class at a time: C full-size arrays, never (H, W, C, 3)
        d = ((rgb.astype(np.int32) - colour) ** 2).sum(axis=2)
        closer = d < best_d
        best[closer], best_d[closer] = c, d[closer]
    return best


def decode_mask(mask: np.ndarray, encoding: str = "binary", schema: LabelSchema | None = None) -> np.ndarray:
    """A decoded mask image (grey or RGB, any dtype) -> ``uint8`` class indices (H, W).

    ``binary``: any channel above half the dtype's range is lesion (1) — unless every value is 0 or 1, which
    are class indices; ``indexed``: values are class indices; ``palette``: nearest of the schema's colours.
    """
    if encoding == "binary":
        grey = mask if mask.ndim == 2 else mask.max(axis=2)
        if grey.max(initial=0) <= 1:
            return grey.astype(np.uint8)
        half = np.iinfo(grey.dtype).max // 2 if np.issubdtype(grey.dtype, np.integer) else 0.5
        return (grey > half).astype(np.uint8)
    if encoding == "indexed":
        grey = mask if mask.ndim == 2 else mask[..., 0]
        if schema is not None and grey.max(initial=0) >= len(schema.class_names):
            raise ValueError(f"an indexed mask holds value {int(grey.max())}, but the schema has "
                             f"{len(schema.class_names)} classes")
        return grey.astype(np.uint8)
    if encoding == "palette":
        if schema is None:
            raise ValueError("palette masks need the label schema (the colour of every class)")
        if mask.dtype != np.uint8:
            mask = window_to_uint8(mask)
        return _nearest_colour(mask, schema.colours)
    raise ValueError(f"{encoding!r} masks are not single images; use read_mask with the sample's mask files")


def mask_files(masks_dir: str | os.PathLike, stem: str, class_names: Sequence[str]) -> dict[str, Path]:
    """The ``per_class_files`` masks of one image: ``<stem>_<class>.<ext>`` for each class present."""
    folder = Path(masks_dir)
    found = {}
    for name in class_names:
        for ext in IMAGE_EXTENSIONS:
            p = folder / f"{stem}_{name}{ext}"
            if p.is_file():
                found[name] = p
                break
    return found


def read_mask(path: str | os.PathLike | Sequence[str | os.PathLike], encoding: str = "binary",
              schema: LabelSchema | None = None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A sample's mask: class indices ``(H, W)``, or for ``per_class_files`` a ``(K, H, W)`` 0/1 stack in the
    order of the schema's foreground classes (``path`` is then the list of that image's mask files,
    ``<stem>_<class>.png``; a class without a file is empty, which needs ``shape`` when none exists at all)."""
    if encoding == "per_class_files":
        if schema is None:
            raise ValueError("per_class_files masks need the label schema (which classes, in which order)")
        files = [Path(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
        planes: dict[str, np.ndarray] = {}
        for f in files:
            cls = next((n for n in sorted(schema.foreground, key=len, reverse=True) if f.stem.endswith(f"_{n}")),
                       None)
            if cls is None:
                raise ValueError(f"{f.name} is not named <stem>_<class> for a class of {list(schema.foreground)}")
            planes[cls] = decode_mask(_read_raw(f), "binary")
        if shape is None:
            if not planes:
                raise ValueError("no mask file and no shape: cannot make an empty mask")
            shape = next(iter(planes.values())).shape
        out = np.zeros((len(schema.foreground), *shape), np.uint8)
        for k, name in enumerate(schema.foreground):
            if name in planes:
                if planes[name].shape != tuple(shape):
                    raise ValueError(f"mask {name} is {planes[name].shape}, expected {tuple(shape)}")
                out[k] = planes[name]
        return out
    return decode_mask(_read_raw(path), encoding, schema)


def write_mask(out_dir: str | os.PathLike, stem: str, mask: np.ndarray, schema: LabelSchema) -> dict[str, Path]:
    """Write a prediction the same way from every door: a class-index PNG (``<stem>_mask.png``: 0/255 for binary
    schemas, so any viewer shows it; class indices otherwise; for multi-label one 0/255 PNG per class,
    ``<stem>_<class>.png``) and a colour PNG for people (``<stem>_colour.png``)."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    if schema.multilabel:
        for k, name in enumerate(schema.class_names):
            written[name] = write_png(out / f"{stem}_{name}.png", (mask[k] > 0).astype(np.uint8) * 255)
        colour = np.zeros((*mask.shape[1:], 3), np.uint8)
        for k, c in enumerate(schema.colours):  # later classes drawn over earlier ones
            colour[mask[k] > 0] = c
    else:
        index = (mask > 0).astype(np.uint8) * 255 if schema.task == "binary" else mask.astype(np.uint8)
        written["mask"] = write_png(out / f"{stem}_mask.png", index)
        colour = np.asarray(schema.colours, np.uint8)[np.clip(mask, 0, len(schema.colours) - 1)]
    written["colour"] = write_png(out / f"{stem}_colour.png", colour)
    return written


# ---- run-length CSVs (UW-Madison) ----------------------------------------------------------------------------------


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


_SLICE_ID = re.compile(r"^(case\d+)_(day\d+)_slice_(\d+)$")


def slice_group(slice_id: str) -> str:
    """The patient (case) of a UW-Madison id ``case123_day20_slice_0065`` -> ``case123``: split by it."""
    m = _SLICE_ID.match(slice_id)
    if not m:
        raise ValueError(f"{slice_id!r} is not a UW-Madison slice id case<N>_day<D>_slice_<S>")
    return m.group(1)


def write_rle_csv(path: str | os.PathLike, masks: dict[str, np.ndarray], class_names: Sequence[str]) -> Path:
    """Write ``id,class,segmentation`` rows (one per id and class, empty when absent) from per-id masks: class
    indices (H, W) with ``class_names[k]`` as index ``k + 1``, or 0/1 stacks (K, H, W) for overlapping classes."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "class", "segmentation"])
        for sid, mask in masks.items():
            for k, name in enumerate(class_names):
                plane = mask[k] if mask.ndim == 3 else mask == k + 1
                writer.writerow([sid, name, rle_encode(plane)])
    return Path(path)


def rle_rows(path: str | os.PathLike) -> dict[str, list[tuple[str, str]]]:
    """An ``id,class,segmentation`` CSV as ``id -> [(class, rle), ...]`` in file order (nothing decoded yet)."""
    rows: dict[str, list[tuple[str, str]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "class", "segmentation"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        for row in reader:
            rows.setdefault(row["id"], []).append((row["class"], (row["segmentation"] or "").strip()))
    return rows


def rle_stack(rows: Sequence[tuple[str, str]], shape: tuple[int, int], class_names: Sequence[str]) -> np.ndarray:
    """One id's ``(class, rle)`` rows -> a 0/1 stack (K, H, W) in ``class_names`` order (classes may overlap; an
    empty segmentation is an absent class)."""
    index = {name: k for k, name in enumerate(class_names)}
    out = np.zeros((len(class_names), *shape), np.uint8)
    for name, rle in rows:
        if name not in index:
            raise ValueError(f"unknown class {name!r}; expected one of {', '.join(class_names)}")
        out[index[name]] |= rle_decode(rle, shape)
    return out


def read_rle_csv(path: str | os.PathLike, shapes: tuple[int, int] | dict[str, tuple[int, int]],
                 class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-id 0/1 stacks (K, H, W) in ``class_names`` order from an ``id,class,segmentation`` CSV.
    ``shapes``: one (H, W) for all ids, or one per id (the CSV does not record sizes)."""
    out = {}
    for sid, rows in rle_rows(path).items():
        if isinstance(shapes, dict) and sid not in shapes:
            raise ValueError(f"no (height, width) given for {sid}")
        out[sid] = rle_stack(rows, shapes[sid] if isinstance(shapes, dict) else shapes, class_names)
    return out
