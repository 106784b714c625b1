"""A figure of a model on dataset images: each row the image, its expert masks and the model's, with a class legend.

    python studies/overlay_figure.py --model weights/unet_lite0.edd2020 --ids edd2020/EDD2020_ACB0004 \
        --out docs/edd2020_overlay.png

``--ids`` are lines of a split file (``<dataset folder>/<stem>`` under ``--data``). The masks are read with the
model's own label schema and drawn as the app draws them (:func:`medseg_core.inference.make_overlay`: multi-label
classes outlined, so overlapping classes stay visible), on raw model output (``--postprocess none``) unless told.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from medseg_core.data import read_sample_mask, read_split
from medseg_core.inference import Segmenter, make_overlay
from medseg_core.io import read_image, write_png

LABEL_H, GAP = 26, 4


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    band = np.full((LABEL_H, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (6, LABEL_H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, tile])


def _legend(names: list[str], colours: list[tuple[int, int, int]], width: int) -> np.ndarray:
    band = np.full((LABEL_H, width, 3), 255, np.uint8)
    x = 6
    for name, colour in zip(names, colours):
        cv2.rectangle(band, (x, 7), (x + 14, 19), tuple(int(c) for c in colour), -1)
        cv2.putText(band, name, (x + 20, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x += 34 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
    return band


def figure(segmenter: Segmenter, data: str | Path, ids: list[str], tile_width: int = 256,
           postprocess: str = "none") -> np.ndarray:
    """Rows of (image, expert masks, model) tiles ``tile_width`` wide, and a legend of the model's classes."""
    schema = segmenter.schema
    colours = list(schema.foreground_colours if schema.multilabel else schema.colours[1:])  # the legend's
    palette = colours if schema.multilabel else list(schema.colours)  # what make_overlay indexes
    names = list(schema.foreground)
    by_id = {}
    for split_file in sorted((Path(data) / "splits").glob("*.txt")):
        wanted = set(ids) - set(by_id)
        if not wanted:
            break
        if wanted & set(split_file.read_text().split()):
            by_id.update({s.id: s for s in read_split(data, str(split_file)) if s.id in wanted})
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"not in any split file under {data}/splits: {', '.join(missing)}")
    rows = []
    for sample_id in ids:
        sample = by_id[sample_id]
        image = read_image(sample.image)
        truth = read_sample_mask(sample, schema, image.shape[:2])
        result = segmenter(image, postprocess=postprocess)
        tiles = [image, make_overlay(image, truth, colours=palette), result.overlay]
        h = max(1, round(image.shape[0] * tile_width / image.shape[1]))
        tiles = [cv2.resize(t, (tile_width, h), interpolation=cv2.INTER_AREA) for t in tiles]
        titles = [Path(sample_id).name, "expert masks", "model, raw" if postprocess == "none" else "model, post-processed"]
        labelled = [_label(t, s) for t, s in zip(tiles, titles)]
        spacer = np.full((labelled[0].shape[0], GAP, 3), 255, np.uint8)
        rows.append(np.hstack([labelled[0], spacer, labelled[1], spacer, labelled[2]]))
    width = rows[0].shape[1]
    return np.vstack([*rows, _legend(names, colours, width)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Draw a model's masks beside the expert masks on dataset images (one "
                                "row per image, a class legend below) and write the figure as a PNG.")
    p.add_argument("--model", required=True, help="a weights name, folder or Hub repo id")
    p.add_argument("--ids", nargs="+", required=True, help="images as in the split files: <folder>/<stem>")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--out", required=True, type=Path, help="the PNG written")
    p.add_argument("--tile-width", type=int, default=256, help="width of each panel (pixels)")
    p.add_argument("--postprocess", default="none", help="'none' (raw masks) or 'recorded'")
    args = p.parse_args(argv)
    segmenter = Segmenter.from_pretrained(args.model, device="cpu")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, figure(segmenter, args.data, args.ids, args.tile_width, args.postprocess))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
