"""Per-class probability thresholds for a multi-label model, chosen on a validation split.

    python bench/threshold_table.py --model runs/x/model --split edd-val --json thresholds.json [--record]

A multi-label model has one sigmoid per class; 0.5 is a fine cut for the common classes, but a rare class (EDD2020's
HGD or cancer: a few dozen training masks) often never reaches it, and then it is never drawn. For each class this
sweeps the threshold over ``--grid`` and measures the split-level Dice of that class (all pixels of the split
together, the figure training selects on), on raw masks. The best threshold of each class (the one nearer 0.5 on a
tie) is printed beside the Dice at 0.5; ``--record`` writes them into the weights' ``config.json`` (``thresholds``),
which ``Segmenter.from_pretrained``, the app and ``train/evaluate.py`` then use (``--threshold 0.5`` there gives the
untuned figure). Choose on a validation split and report on a test split: the choice is fitted to the split it
was made on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medseg_core.cli import warn_if_test_split, write_json
from medseg_core.data import read_sample_mask, read_split
from medseg_core.hub import record_thresholds, resolve_weights
from medseg_core.inference import Segmenter
from medseg_core.io import read_image
from medseg_core.metrics import class_pixel_counts, split_class_dice

DEFAULT_GRID = [round(0.05 * k, 2) for k in range(1, 20)]


def sweep(segmenter: Segmenter, samples: list, grid: list[float], progress: bool = True) -> np.ndarray:
    """Split-level Dice (len(grid), K) of every class at every threshold, on raw masks: the pixel counts and the
    ``class_dice_<class>`` of ``train/evaluate.py`` (:func:`medseg_core.metrics.split_class_dice`)."""
    names = segmenter.schema.foreground
    rows: list[list[dict[str, int]]] = [[] for _ in grid]
    for sample in tqdm(samples, desc="threshold sweep", unit="image", disable=not progress):
        image = read_image(sample.image)
        truth = read_sample_mask(sample, segmenter.schema, image.shape[:2])
        probs, _ = segmenter.predict_probs(image)
        for t, threshold in enumerate(grid):
            rows[t].append(class_pixel_counts(probs > threshold, truth, class_names=names, multilabel=True))
    return np.array([[split_class_dice(r)[f"class_dice_{n}"] for n in names] for r in rows])


def choose(dice: np.ndarray, grid: list[float]) -> list[float]:
    """The best threshold of each class; among equal Dice the one nearest 0.5."""
    order = np.argsort(np.abs(np.asarray(grid) - 0.5), kind="stable")
    return [float(grid[order[np.argmax(dice[order, c])]]) for c in range(dice.shape[1])]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Choose per-class probability thresholds of a multi-label model on a "
                                "validation split (split-level Dice per class) and optionally record them.")
    p.add_argument("--model", required=True, help="weights folder, a name under weights/, or a Hub repo id")
    p.add_argument("--split", required=True, help="the split to choose on (a validation split), e.g. edd-val")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--grid", nargs="+", type=float, default=DEFAULT_GRID, help="thresholds tried (0 < t < 1)")
    p.add_argument("--record", action="store_true", help="write the chosen thresholds into the weights' config.json")
    p.add_argument("--json", help="write the sweep and the choice to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not all(0.0 < t < 1.0 for t in args.grid):
        p.error("--grid values must lie strictly between 0 and 1")
    grid = sorted(set(args.grid) | {0.5})
    segmenter = Segmenter.from_pretrained(args.model, device="cpu", postprocess="none", threshold=0.5)
    schema = segmenter.schema
    if not schema.multilabel:
        p.error(f"{args.model} is a {schema.task} model; per-class thresholds are for multi-label models")
    samples = read_split(args.data, args.split)
    dice = sweep(segmenter, samples, grid, progress=not args.no_progress)
    chosen = choose(dice, grid)
    at_half = dice[grid.index(0.5)]
    at_chosen = np.array([dice[grid.index(t), c] for c, t in enumerate(chosen)])
    print(f"{args.split} ({len(samples)} images), split-level Dice per class")
    print(f"{'class':<14}{'at 0.5':>8}{'threshold':>11}{'Dice':>8}")
    for c, name in enumerate(schema.foreground):
        print(f"{name:<14}{at_half[c]:>8.4f}{chosen[c]:>11.2f}{at_chosen[c]:>8.4f}")
    print(f"{'mean':<14}{at_half.mean():>8.4f}{'':>11}{at_chosen.mean():>8.4f}")
    result = {"model": str(args.model), "split": Path(args.split).stem, "n": len(samples), "grid": grid,
              "classes": list(schema.foreground), "dice": dice.round(6).tolist(), "thresholds": chosen,
              "class_dice_at_0.5": float(at_half.mean()), "class_dice_at_thresholds": float(at_chosen.mean())}
    write_json(args.json, result)
    if args.record:
        warn_if_test_split(args.split, "thresholds")
        print(f"recorded in {record_thresholds(resolve_weights(args.model), chosen)}")
    return result


if __name__ == "__main__":
    main()
