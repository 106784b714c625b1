"""TDC-Enhance: three enhanced views of an endoscopy image (Texture, Detail, Colour), stage 1 of DynaSiam.

Each view is a ``uint8`` RGB image the size of its input. The arithmetic is done in ``float32`` and clipped to
0..255 before the conversion back, so bright pixels saturate instead of wrapping round to black. Everything is
OpenCV calls and 256-entry lookup tables: a 512x512 image goes through the three views in a few milliseconds on
one core (``python bench/enhance.py``). Parameters are in pixels of the image they are given; DynaSiam computes the
views on the image already resized to its input size, in training and at inference alike.

Command line (``python -m medseg_core.enhance --help``):

* Enrich a dataset for a single-path model, one enhanced copy of every image per view::

      python -m medseg_core.enhance --images DIR [--masks DIR] --out OUT [--name enriched]
      python -m medseg_core.enhance --data-root ../shared/data --split polyp-train --out OUT

  Layout (what ``medseg_core.data.read_split`` reads): ``OUT/<folder>/images/<stem>_<view>.png`` and, beside it,
  a byte-identical copy of the mask as ``OUT/<folder>/masks/<stem>_<view><ext>`` (per-class mask files, as in
  EDD2020, as ``<stem>_<view>_<class><ext>``); the split file
  ``OUT/splits/<name>.txt`` lists ``<folder>/<stem>_<view>``. ``<folder>`` is ``--name`` for a folder of images
  and the dataset folder for a split; the split file is named after ``--name`` (default: the split's name).
  Train with ``--data.root OUT --data.train_split <name>``; write the validation split into the same root with
  ``--views original`` so it stays unenhanced.
* A figure of an image beside its three views::

      python -m medseg_core.enhance --figure docs/tdc_views.png --image examples/polypgen_C3_EndoCV2021_00394.jpg
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "VIEWS",
    "color",
    "detail",
    "make_figure",
    "specular_mask",
    "stack_views",
    "tdc_views",
    "texture",
    "write_enriched",
]

log = logging.getLogger(__name__)

#: The view names, in the order DynaSiam stacks them by default.
VIEWS: tuple[str, ...] = ("original", "texture", "detail", "color")


def _check_rgb(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {got}")
    return np.ascontiguousarray(img)


def _unsharp(img: np.ndarray, sigma: float, gain: Sequence[float]) -> np.ndarray:
    """``img + gain * (img - blur)`` per channel, saturated to ``uint8`` (clipped, never wrapped).

    ``cv2.addWeighted`` does the arithmetic in floating point and saturates on the way out. The blur itself is
    OpenCV's rounded 8-bit Gaussian: a float32 pipeline gives the same output within a few grey levels but,
    allocating four float images per call, runs about four times slower.
    """
    blur = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT101)
    gains = [float(g) for g in gain]
    if len(set(gains)) == 1:
        return cv2.addWeighted(img, 1.0 + gains[0], blur, -gains[0], 0.0)
    pairs = zip(cv2.split(img), cv2.split(blur), gains)
    return cv2.merge([cv2.addWeighted(c, 1.0 + g, b, -g, 0.0) for c, b, g in pairs])


def _to_uint8(f: np.ndarray) -> np.ndarray:
    return np.clip(f, 0.0, 255.0).round().astype(np.uint8)


def _channel_gains(img: np.ndarray, amount: float, reference: float = 128.0) -> tuple[float, float, float]:
    # Dim channels (blue, often green, in endoscopy) carry the faint vascular and pit texture: give them more gain,
    # and bright ones (red) less, so the sharpening does not just saturate red. Bounded so black frames stay sane.
    means = np.asarray(cv2.mean(img)[:3])
    gains = amount * np.clip(np.sqrt(reference / np.maximum(means, 1.0)), 0.5, 2.0)
    return tuple(float(g) for g in gains)


def texture(img: np.ndarray, sigma: float = 2.0, amount: float = 1.0) -> np.ndarray:
    """Texture view: unsharp masking per channel, the gain adapted to each channel's mean (dimmer -> stronger).

    Args:
        img: ``uint8`` RGB (H, W, 3).
        sigma: Gaussian blur sigma (pixels) of the low-pass image subtracted.
        amount: base gain of the high-pass detail added back.

    Returns:
        ``uint8`` RGB (H, W, 3).
    """
    img = _check_rgb(img)
    return _unsharp(img, sigma, _channel_gains(img, amount))


def specular_mask(img: np.ndarray, threshold: int = 210, dilate: int = 2) -> np.ndarray:
    """Bright, colourless spots (specular reflections): every channel at or above ``threshold``, grown by
    ``dilate`` pixels to cover their halo. Returns a ``uint8`` mask (H, W), 255 on highlights."""
    img = _check_rgb(img)
    mask = cv2.inRange(img, (threshold,) * 3, (255,) * 3)
    if dilate > 0 and cv2.countNonZero(mask):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        mask = cv2.dilate(mask, kernel)
    return mask


def _sigmoid_lut(centre: float, gain: float) -> np.ndarray:
    x = np.arange(256, dtype=np.float32) / 255.0
    s = 1.0 / (1.0 + np.exp(-gain * (x - centre)))
    lo, hi = s[0], s[-1]
    return _to_uint8((s - lo) / max(hi - lo, 1e-6) * 255.0)


def _stretch_lut(channel: np.ndarray, low_pct: float, high_pct: float) -> np.ndarray:
    # Percentiles from the 256-bin histogram: the same answer as np.percentile on uint8, without a sort.
    hist = cv2.calcHist([channel], [0], None, [256], [0, 256]).ravel()
    cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
    lo = float(np.searchsorted(cdf, low_pct / 100.0))
    hi = float(np.searchsorted(cdf, high_pct / 100.0))
    if hi - lo < 1.0:
        return np.arange(256, dtype=np.uint8)
    return _to_uint8((np.arange(256, dtype=np.float32) - lo) / (hi - lo) * 255.0)


def _inpaint(img: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """Telea inpainting of the masked pixels, done at half resolution and pasted back into the masked pixels only.

    Telea's cost grows with the masked area; the fill of a highlight is a smooth colour, so computing it on a
    quarter of the pixels changes it by a few grey levels and halves the time of :func:`detail`.
    """
    h, w = mask.shape
    if min(h, w) < 64:
        return cv2.inpaint(img, mask, radius, cv2.INPAINT_TELEA)
    size = (max(1, w // 2), max(1, h // 2))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    # Any highlight pixel in a 2x2 block marks the block, so no glint leaks into the small image's fill.
    small_mask = cv2.threshold(cv2.resize(mask, size, interpolation=cv2.INTER_AREA), 0, 255, cv2.THRESH_BINARY)[1]
    fill = cv2.resize(cv2.inpaint(small, small_mask, max(1, radius // 2), cv2.INPAINT_TELEA), (w, h),
                      interpolation=cv2.INTER_LINEAR)
    out = img.copy()
    cv2.copyTo(fill, mask, out)
    return out


def detail(
    img: np.ndarray,
    sigma: float = 1.5,
    amount: float = 0.8,
    red_gain: float = 5.0,
    green_percentiles: tuple[float, float] = (1.0, 99.0),
    specular_threshold: int = 210,
    max_specular_fraction: float = 0.1,
) -> np.ndarray:
    """Detail view (mucosal detail): specular highlights inpainted, unsharp masking, a sigmoid contrast curve on red
    (centred on the image's median red) and a percentile stretch of green.

    Highlights go first, so the sharpening and stretches never act on them. When more than
    ``max_specular_fraction`` of the image looks specular, the image is just bright (or over-exposed), not
    glinting, and nothing is inpainted.

    Args:
        img: ``uint8`` RGB (H, W, 3).
        sigma, amount: unsharp-masking blur sigma (pixels) and gain.
        red_gain: slope of the sigmoid on red (higher: more contrast around the median).
        green_percentiles: the (low, high) percentiles of green mapped to 0 and 255.
        specular_threshold: see :func:`specular_mask`.
        max_specular_fraction: largest share of the image treated as highlights.

    Returns:
        ``uint8`` RGB (H, W, 3).
    """
    img = _check_rgb(img)
    mask = specular_mask(img, specular_threshold)
    if 0 < cv2.countNonZero(mask) <= max_specular_fraction * mask.size:
        img = _inpaint(img, mask)
    red, green, blue = cv2.split(_unsharp(img, sigma, (amount,) * 3))
    # The median of a ~64x64 subsample is as good a centre as the full median, at a fraction of the cost.
    centre = float(np.median(red[:: max(1, red.shape[0] // 64), :: max(1, red.shape[1] // 64)])) / 255.0
    red = cv2.LUT(red, _sigmoid_lut(centre, red_gain))
    green = cv2.LUT(green, _stretch_lut(green, *green_percentiles))
    return cv2.merge([red, green, blue])


def _equalise_lut(channel: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    hist = cv2.calcHist([channel], [0], mask, [256], [0, 256]).ravel()
    cdf = np.cumsum(hist)
    if cdf[-1] == 0:
        return np.arange(256, dtype=np.uint8)
    first = cdf[np.flatnonzero(hist)[0]]
    if cdf[-1] == first:  # one grey level: nothing to spread
        return np.arange(256, dtype=np.uint8)
    return _to_uint8((cdf - first) / (cdf[-1] - first) * 255.0)


def color(
    img: np.ndarray, sigma: float = 3.0, amount: float = 1.5, strength: float = 0.8, dark_level: int = 20
) -> np.ndarray:
    """Colour (tone) view: strong unsharp masking, then histogram equalisation of each channel, blended with the
    sharpened image by ``strength`` (1 = fully equalised) to keep the colour casts of full equalisation in check.

    The equalisation histograms leave out the endoscope's black frame (pixels whose brightest channel is below
    ``dark_level``): counted, the frame takes a large share of the histogram and squeezes the tissue's tones
    together at the top instead of spreading them.

    Returns:
        ``uint8`` RGB (H, W, 3).
    """
    img = _check_rgb(img)
    sharp = _unsharp(img, sigma, (amount,) * 3)
    tissue = cv2.inRange(img, (0, 0, 0), (dark_level - 1,) * 3)
    tissue = cv2.bitwise_not(tissue) if cv2.countNonZero(tissue) < tissue.size else None
    channels = cv2.split(sharp)
    equalised = cv2.merge([cv2.LUT(c, _equalise_lut(c, tissue)) for c in channels])
    return cv2.addWeighted(equalised, float(strength), sharp, 1.0 - float(strength), 0.0)


_VIEW_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": lambda img: img,
    "texture": texture,
    "detail": detail,
    "color": color,
}


def _check_views(views: Sequence[str]) -> tuple[str, ...]:
    views = tuple(views)
    unknown = [v for v in views if v not in _VIEW_FUNCTIONS]
    if unknown or not views:
        raise ValueError(f"unknown view(s) {unknown or '(none given)'}; choose from {list(VIEWS)}")
    return views


def tdc_views(img: np.ndarray) -> dict[str, np.ndarray]:
    """The image and its three enhanced views: ``{"original", "texture", "detail", "color"}``, each ``uint8`` RGB
    (H, W, 3) the size of ``img``."""
    img = _check_rgb(img)
    return {name: fn(img) for name, fn in _VIEW_FUNCTIONS.items()}


def stack_views(img: np.ndarray, views: Sequence[str]) -> np.ndarray:
    """The named views of ``img`` concatenated on the channel axis, in the order given: ``uint8`` (H, W, 3*V).

    This is DynaSiam's input before normalisation; only the views named are computed.
    """
    img = _check_rgb(img)
    return np.concatenate([_VIEW_FUNCTIONS[v](img) for v in _check_views(views)], axis=2)


# ----------------------------------------------------------------------------------------------------------------
# Command line: dataset enrichment and the figure.


def _mask_copies(stem: str, mask: Path | tuple[Path, ...] | None) -> list[tuple[Path, str]]:
    """The mask files of one sample, each with what follows ``<stem>_<view>`` in its copy's name: one file
    (``<stem>`` or ``<stem>_mask``: the extension) or, for ``per_class_files`` datasets, ``<stem>_<class>`` per class
    (``_<class>`` and the extension)."""
    if mask is None:
        return []
    if isinstance(mask, tuple):
        return [(p, p.name[len(stem):]) for p in mask]
    if mask.suffix.lower() == ".csv":
        raise ValueError(f"{mask}: run-length (masks.csv) datasets cannot be enriched; decode them to PNG masks first")
    return [(mask, mask.suffix)]


def write_enriched(
    samples: Sequence[tuple[str, Path, Path | tuple[Path, ...] | None]],
    out_dir: str | Path,
    split_name: str,
    views: Sequence[str] = VIEWS,
    progress: bool = True,
) -> Path:
    """Write every sample's views as a dataset ``medseg_core.data.read_split`` reads, and its split file.

    Args:
        samples: ``("<folder>/<stem>", image path, mask path(s) or None)`` per image; per-class mask files
            (``<stem>_<class>.png``) are copied as ``<stem>_<view>_<class>.png``.
        out_dir: the new data root.
        split_name: the split file written, ``<out_dir>/splits/<split_name>.txt``.
        views: which views to write (``original`` is a lossless PNG copy).
        progress: show a tqdm bar.

    Returns:
        The split file's path. Lines are ``<folder>/<stem>_<view>``; a split file of the same name is replaced.
    """
    from tqdm.auto import tqdm

    from .io import read_image, write_png

    views = _check_views(views)
    out = Path(out_dir)
    lines: list[str] = []
    for sample_id, image_path, mask_path in tqdm(samples, desc="TDC-Enhance", unit="image", disable=not progress):
        folder, stem = sample_id.split("/", 1)
        (out / folder / "images").mkdir(parents=True, exist_ok=True)
        image = read_image(image_path)
        for view in views:
            write_png(out / folder / "images" / f"{stem}_{view}.png", _VIEW_FUNCTIONS[view](image))
            for src, tail in _mask_copies(stem, mask_path):
                (out / folder / "masks").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out / folder / "masks" / f"{stem}_{view}{tail}")
            lines.append(f"{folder}/{stem}_{view}")
    split_file = out / "splits" / f"{split_name}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(lines) + "\n")
    log.info("wrote %d images (%d views) and %s", len(lines), len(views), split_file)
    return split_file


def make_figure(img: np.ndarray, tile_width: int = 256) -> np.ndarray:
    """One ``uint8`` RGB row: the image and its three views, each ``tile_width`` wide, labelled above."""
    img = _check_rgb(img)
    h, w = img.shape[:2]
    tile_h = max(1, round(h * tile_width / w))
    small = cv2.resize(img, (tile_width, tile_h), interpolation=cv2.INTER_AREA)
    label_h, gap = 28, 4
    # Views computed on the downscaled tile, as DynaSiam computes them on its resized input.
    tiles = []
    for name, view in tdc_views(small).items():
        tile = np.full((label_h + tile_h, tile_width, 3), 255, np.uint8)
        tile[label_h:] = view
        text = name.capitalize()
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        cv2.putText(tile, text, ((tile_width - tw) // 2, (label_h + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
        tiles.extend([tile, np.full((label_h + tile_h, gap, 3), 255, np.uint8)])
    return np.concatenate(tiles[:-1], axis=1)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m medseg_core.enhance",
        description="TDC-Enhance: write enhanced copies (texture, detail, colour) of a dataset, with its masks and "
        "a split file, so a single-path model can train on them; or draw a figure of one image's views.",
    )
    src = p.add_argument_group("dataset enrichment")
    src.add_argument("--images", type=Path, help="a folder of images")
    src.add_argument("--masks", type=Path, help="their masks (<stem> or <stem>_mask), copied beside the views")
    src.add_argument("--data-root", type=Path, help="a data root with splits/ (instead of --images)")
    src.add_argument("--split", help="the split of --data-root to enrich, e.g. polyp-train")
    src.add_argument("--out", type=Path, help="the new data root written")
    src.add_argument("--name", help="split file name (and folder, for --images); default 'enriched' or the split's")
    src.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS), help="views to write")
    src.add_argument("--no-progress", action="store_true", help="no progress bar")
    fig = p.add_argument_group("figure")
    fig.add_argument("--figure", type=Path, help="write a PNG of --image beside its three views")
    fig.add_argument("--image", type=Path, help="the image drawn by --figure")
    fig.add_argument("--tile-width", type=int, default=256, help="width of each panel of the figure (pixels)")
    args = p.parse_args(argv)
    if args.figure is not None:
        if args.image is None:
            p.error("--figure needs --image")
    elif args.out is None or (args.images is None) == (args.data_root is None):
        p.error("give --out and either --images DIR or --data-root ROOT --split NAME (or --figure OUT --image IMG)")
    elif args.data_root is not None and not args.split:
        p.error("--data-root needs --split")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = _parse_args(argv)
    from .data import pairs_from_folders, read_split
    from .io import read_image, write_png

    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        write_png(args.figure, make_figure(read_image(args.image), args.tile_width))
        log.info("wrote %s", args.figure)
        return 0
    if args.images is not None:
        name = args.name or "enriched"
        samples = [(f"{name}/{s.id}", s.image, s.mask) for s in pairs_from_folders(args.images, args.masks)]
    else:
        name = args.name or args.split
        samples = [(s.id, s.image, s.mask) for s in read_split(args.data_root, args.split)]
    write_enriched(samples, args.out, name, args.views, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
