"""A multi-class model's class bias (logit adjustment), chosen on a validation split.

    python bench/class_bias.py --model weights/unet_lite2.neopolyp --split neopolyp-full-val --json out.json [--record]

A multi-class model trained on a split where one lesion class is rare (NeoPolyp's non-neoplastic polyps: in 172 of
the 560 training images, against 412 for neoplastic ones) leans towards the common class: a whole non-neoplastic
polyp comes out neoplastic. Adding a log-odds offset to the rare class when choosing a lesion's class (never where
the lesion is) corrects that lean. This sweeps the offset of every lesion class but the first over ``--grid`` (one
at a time, the others held at their best so far), under each post-processing chain of ``--chains`` (the per-region
vote of ``region_class_consistency`` decides a polyp's class as a whole), and measures the mean split-level Dice of
the lesion classes (``class_dice`` of ``train/evaluate.py``). The best pair (the smaller offsets on a tie) is
printed beside plain argmax; ``--record`` writes the offsets (``class_bias``) and the chain (``postprocess``) into
the weights' ``config.json``, which ``Segmenter.from_pretrained``, the app and ``train/evaluate.py`` then use
(``--class-bias 0 0 0 --postprocess none`` there gives the untuned figure). Choose on a validation split and report
on a test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from medseg_core.cli import warn_if_test_split, write_json
from medseg_core.data import read_sample_mask, read_split
from medseg_core.hub import record_class_bias, record_postprocess, recorded_postprocess, resolve_weights
from medseg_core.inference import Segmenter, check_class_bias
from medseg_core.io import read_image
from medseg_core.metrics import class_pixel_counts, split_class_dice
from medseg_core.postprocess import resolve_postprocess

DEFAULT_GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]


def cached_probs(segmenter: Segmenter, samples: list, progress: bool = True) -> list[tuple]:
    """(image, ground truth, probabilities) of every sample; the network runs once per image."""
    out = []
    for sample in tqdm(samples, desc="predict", unit="image", disable=not progress):
        image = read_image(sample.image)
        truth = read_sample_mask(sample, segmenter.schema, image.shape[:2])
        out.append((image, truth, segmenter.predict_probs(image)[0]))
    return out


def class_dice(segmenter: Segmenter, cache: list[tuple], bias: list[float], chain: list[str]) -> float:
    """Mean split-level Dice of the lesion classes with this bias and post-processing chain."""
    segmenter.class_bias = check_class_bias(bias, segmenter.schema)
    names = segmenter.schema.foreground
    rows = [class_pixel_counts(segmenter.processed_mask(image, probs, chain or "none")[0], truth, class_names=names)
            for image, truth, probs in cache]
    return split_class_dice(rows)["class_dice"]


def sweep(segmenter: Segmenter, cache: list[tuple], grid: list[float], chain: list[str]) -> tuple[list[float], float,
                                                                                                   list[dict]]:
    """Coordinate sweep of the lesion classes' offsets (the first lesion class and the background stay at 0):
    the best offsets, their Dice and every point tried."""
    n = len(segmenter.schema.class_names)
    best = [0.0] * n
    best_dice = class_dice(segmenter, cache, best, chain)
    tried = [{"bias": list(best), "class_dice": best_dice}]
    for c in range(2, n):
        for b in sorted(grid, key=abs):
            trial = best[:c] + [b] + best[c + 1:]
            if trial == best:
                continue
            dice = class_dice(segmenter, cache, trial, chain)
            tried.append({"bias": trial, "class_dice": dice})
            if dice > best_dice + 1e-9:
                best, best_dice = trial, dice
    return best, best_dice, tried


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Choose a multi-class model's class bias (log-odds offsets for "
                                "choosing a lesion's class) and post-processing chain on a validation split, by "
                                "the mean split-level Dice of the lesion classes; optionally record them.")
    p.add_argument("--model", required=True, help="weights folder, a name under weights/, or a Hub repo id")
    p.add_argument("--split", required=True, help="the split to choose on (a validation split)")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--grid", nargs="+", type=float, default=DEFAULT_GRID, help="offsets tried for each class")
    p.add_argument("--chains", nargs="+", default=["none", "region_class_consistency"],
                   help="post-processing chains tried, each as step names joined by '+' ('none': raw masks)")
    p.add_argument("--record", action="store_true", help="write the chosen bias and chain into config.json")
    p.add_argument("--json", help="write the sweep and the choice to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if any(abs(b) > 10 for b in args.grid):
        p.error("--grid offsets must lie from -10 to 10")
    try:
        chains = [list(resolve_postprocess("none" if c == "none" else c.split("+"))) for c in args.chains]
    except ValueError as err:
        p.error(str(err))
    segmenter = Segmenter.from_pretrained(args.model, device="cpu", postprocess="none")
    if segmenter.schema.task != "multiclass" or len(segmenter.schema.class_names) < 3:
        p.error(f"{args.model} is not a multi-class model with two or more lesion classes")
    samples = read_split(args.data, args.split)
    cache = cached_probs(segmenter, samples, progress=not args.no_progress)
    plain = class_dice(segmenter, cache, [0.0] * len(segmenter.schema.class_names), [])
    results = []
    for chain in chains:
        bias, dice, tried = sweep(segmenter, cache, args.grid, chain)
        results.append({"chain": chain, "bias": bias, "class_dice": dice, "tried": tried})
    best = max(results, key=lambda r: (round(r["class_dice"], 9), -sum(map(abs, r["bias"])), -len(r["chain"])))
    print(f"{args.split} ({len(samples)} images), mean split-level Dice of the lesion classes")
    print(f"{'chain':<40}{'bias':>24}{'class Dice':>12}")
    print(f"{'none (plain argmax)':<40}{'':>24}{plain:>12.4f}")
    for r in results:
        print(f"{'+'.join(r['chain']) or 'none':<40}{' '.join(f'{b:g}' for b in r['bias']):>24}{r['class_dice']:>12.4f}")
    print(f"chosen: {'+'.join(best['chain']) or 'none'}, bias {best['bias']}")
    result = {"model": str(args.model), "split": Path(args.split).stem, "n": len(samples),
              "classes": list(segmenter.schema.class_names), "grid": args.grid, "class_dice_plain": plain,
              "results": results, "chosen": {"postprocess": best["chain"], "class_bias": best["bias"],
                                             "class_dice": best["class_dice"]}}
    write_json(args.json, result)
    if args.record:
        warn_if_test_split(args.split, "class bias and post-processing")
        folder = resolve_weights(args.model)
        record_class_bias(folder, best["bias"])
        refiner = recorded_postprocess(folder)["refiner"] if "refine" in best["chain"] else None
        print(f"recorded in {record_postprocess(folder, best['chain'], refiner)}")
    return result


if __name__ == "__main__":
    main()
