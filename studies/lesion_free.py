"""How much of a split's mean Dice its lesion-free images take, read from evaluate.py JSON files already written.

    python studies/lesion_free.py docs/results/unet_lite2.polyp_*test-polypgen*.json --json out.json

An image without a lesion (14 of PolypGen's 150 test frames) scores Dice 1 when nothing is drawn on it and 0 for any
drawn pixel, so a handful of them moves a split's mean by far more than their share of pixels. ``train/evaluate.py``
reports this for every new run (``lesion_free_images``, ``false_alarms``, ``dice_lesion_images``); this script
gives the same figures for JSON files written before it did, from their per-image rows: the lesion-free images are
found from the split's ground truth (the ``n_lesion_truth`` counts where a file has them, else the masks, read once
per split), and a lesion counts as drawn on such an image when its Dice is below 1 (``n_lesion_pred`` where present).
Nothing is run through a network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image

from medseg_core.cli import write_json
from medseg_core.data import read_sample_mask, read_split
from medseg_core.labels import LabelSchema, schema_from_config
from medseg_core.metrics import lesion_free_summary


def lesion_free_ids(data: str, split: str, labels: dict[str, Any] | None) -> set[str]:
    """The ids of the split's images whose ground truth holds no lesion pixel."""
    # evaluate.py's "labels" block is the schema without the model's number of outputs; older files have none.
    schema = LabelSchema.from_mapping(labels) if labels else schema_from_config({"num_classes": 1})
    out = set()
    for sample in read_split(data, split):
        with Image.open(sample.image) as image:
            shape = image.size[::-1]
        if not read_sample_mask(sample, schema, shape).any():
            out.add(sample.id)
    return out


def summarise(result: dict[str, Any], free: set[str] | None) -> dict[str, Any]:
    """One evaluate.py result's lesion-free figures; ``free`` (the split's lesion-free ids) is needed only for rows
    without the pixel counts."""
    rows = result["per_image"]
    if free is not None and rows and "n_lesion_truth" not in rows[0]:
        rows = [{**r, "n_lesion_truth": 0 if r["id"] in free else 1,
                 "n_lesion_pred": int(r["dice"] < 1.0) if r["id"] in free else 1} for r in rows]
    return {"model": result.get("model"), "split": result["split"], "n": len(rows), "dice": result["dice"],
            "tta": result.get("tta", False), **lesion_free_summary(rows)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Lesion-free images, the false alarms on them and the Dice over the "
                                            "images with a lesion, from evaluate.py JSON files (no network runs).")
    p.add_argument("files", nargs="+", help="JSON files written by train/evaluate.py --json (with per-image rows)")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/ (for files written "
                                                            "before evaluate.py counted lesion pixels)")
    p.add_argument("--split", help="split name or split file, for files that name their split by a stem only "
                                   "(written with --images/--masks or a split file outside DATA/splits)")
    p.add_argument("--json", help="write the table to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    free_by_split: dict[str, set[str]] = {}
    table = []
    for path in args.files:
        result = json.loads(Path(path).read_text())
        if "per_image" not in result:
            print(f"{path}: no per-image rows, skipped")
            continue
        rows = result["per_image"]
        free = None
        if rows and "n_lesion_truth" not in rows[0]:
            split = args.split or result["split"]
            if split not in free_by_split:
                try:
                    free_by_split[split] = lesion_free_ids(args.data, split, result.get("labels"))
                except FileNotFoundError as err:
                    raise SystemExit(f"{path}: cannot read its split's masks ({err}); name the split with --split") from err
            free = free_by_split[split]
        table.append({"file": Path(path).name, **summarise(result, free)})
    width = max((len(r["file"]) for r in table), default=4)
    print(f"{'file':<{width}}  {'n':>4} {'dice':>7} {'free':>5} {'drawn':>6} {'dice (lesion images)':>21}")
    for r in table:
        print(f"{r['file']:<{width}}  {r['n']:>4} {r['dice']:>7.4f} {r.get('lesion_free_images', 0):>5} "
              f"{r.get('false_alarms', 0):>6} {r.get('dice_lesion_images', r['dice']):>21.4f}")
    write_json(args.json, {"rows": table})
    return table


if __name__ == "__main__":
    main()
