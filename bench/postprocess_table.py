"""What each post-processing step does to a model's Dice on a split: none, each step alone, the full chain.

    python bench/postprocess_table.py --model runs/unet_lite0.neopolyp/model --split train/splits/neopolyp-val.txt
    python bench/postprocess_table.py --model unet_lite0.polyp --split polyp-val --refiner runs/refiner.polyp/model

The model runs once per image; every variant post-processes the same probabilities, so the differences are the
steps' alone. Dice is per image at the original resolution, then averaged (the project's protocol): the lesion
Dice for binary models; per-class Dice and their mean (``mdice``) for multi-class ones, and there also the
split-level class Dice (pixels summed over the split: ``class_dice_<class>``, their mean ``class_dice``), which is the
headline a step must raise to be recorded. Choose steps on a validation split (the test split is read once per
reported number).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medseg_core.cli import warn_if_test_split, write_json
from medseg_core.data import Sample, read_sample_mask, read_split
from medseg_core.hub import load_model, record_postprocess, resolve_weights
from medseg_core.inference import Segmenter
from medseg_core.io import read_image
from medseg_core.labels import MASK_ENCODINGS, LabelSchema
from medseg_core.metrics import class_pixel_counts, dice_score, per_class_metrics, split_class_dice
from medseg_core.models import SegModel
from medseg_core.postprocess import POSTPROCESSING_STEPS, apply_postprocessing, headline_metric, helpful_steps

log = logging.getLogger("medseg.bench.postprocess")

#: The full chain, in order: clean up, make classes consistent, then refine each remaining region (the reference
#: design applies its refinement network last).
DEFAULT_CHAIN = ("remove_small_components", "fill_holes", "adaptive_morphology", "region_class_consistency", "refine")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Dice of a model on a split without post-processing, with each step "
                                "alone, and with the full chain.")
    p.add_argument("--model", required=True, help="weights folder, a name under weights/, or a Hub repo id")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--split", required=True, help="split name (e.g. polyp-val) or path to a split .txt file")
    p.add_argument("--steps", nargs="+", default=None, choices=sorted(POSTPROCESSING_STEPS), metavar="STEP",
                   help=f"the chain, in order, from {', '.join(sorted(POSTPROCESSING_STEPS))} "
                   f"(default: {' '.join(DEFAULT_CHAIN)}; 'refine' only with --refiner)")
    p.add_argument("--refiner", default=None, help="weights of a 'refiner' model for the refine step")
    p.add_argument("--mask-encoding", choices=MASK_ENCODINGS, default=None,
                   help="how masks encode classes (default: the mask_encoding of the weights' label schema)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", default=None, help="write the table (and per-image scores) to this JSON file")
    p.add_argument("--record", action="store_true",
                   help="write the steps that helped (in chain order) into the weights folder's config.json, where "
                   "Segmenter, the app and predict_folder take them as the model's post-processing; use a "
                   "validation split")
    p.add_argument("--min-gain", type=float, default=0.001,
                   help="with --record: the least gain in the headline score (alone, against none) a step needs")
    args = p.parse_args(argv)
    if args.steps and "refine" in args.steps and not args.refiner:
        p.error("the refine step needs --refiner")
    return args


def variants(chain: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``none``, every step of the chain alone, and the full chain (when it has more than one step)."""
    out: dict[str, tuple[str, ...]] = {"none": ()}
    out.update({step: (step,) for step in chain})
    if len(chain) > 1:
        out["full chain"] = tuple(chain)
    return out


def image_scores(pred: np.ndarray, target: np.ndarray, schema: LabelSchema) -> dict[str, float]:
    """Lesion Dice, plus for multi-class masks per-class Dice, their mean and the pixel counts behind the split-level
    class Dice (as ``evaluate.py`` names them)."""
    scores = {"dice": dice_score(pred > 0, target > 0)}
    if schema.task == "multiclass":
        scores.update({k: v for k, v in per_class_metrics(pred, target, class_names=schema.foreground).items()
                       if k.startswith("dice_") or k == "mdice"})
        scores.update(class_pixel_counts(pred, target, class_names=schema.foreground))
    return scores


def postprocess_table(segmenter: Segmenter, samples: Sequence[Sample], mask_encoding: str | None,
                      chains: dict[str, tuple[str, ...]], refiner: SegModel | None = None, tta: bool = False,
                      progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every variant's scores over the samples, with the per-image rows: ``{variant: {"mean", "per_image"}}``;
    ``mean`` holds per-image means and, for multi-class models, the split-level ``class_dice_<class>`` and
    ``class_dice``."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in chains}
    for s in tqdm(samples, desc="post-processing table", disable=not progress):
        image = read_image(s.image)
        target = read_sample_mask(s, segmenter.schema, image.shape[:2], mask_encoding)
        probs, _ = segmenter.predict_probs(image, tta=tta)
        raw = segmenter.mask_from_probs(probs)
        for name, steps in chains.items():
            pred = apply_postprocessing(raw, steps, probs, image=image, refiner=refiner)
            rows[name].append({"id": s.id, **image_scores(pred, target, segmenter.schema)})
    table = {}
    for name, per_image in rows.items():
        keys = [k for k in per_image[0] if k != "id" and not k.startswith("n_")]
        mean = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
        table[name] = {"steps": list(chains[name]), "mean": {**mean, **split_class_dice(per_image)},
                       "per_image": per_image}
    return table


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """One row per variant; the last column is the change of the headline score against ``none``."""
    first = next(iter(table.values()))["mean"]
    keys = ["dice", *sorted(k for k in first if k.startswith("dice_")), *(["mdice"] if "mdice" in first else []),
            *sorted(k for k in first if k.startswith("class_dice_")), *(["class_dice"] if "class_dice" in first else [])]
    headline = headline_metric(first)
    base = table["none"]["mean"][headline] if "none" in table else None
    width = max(12, *(len(n) for n in table)) + 2
    cols = [max(10, len(k) + 2) for k in keys]
    lines = [f"{'variant':<{width}}" + "".join(f"{k:>{c}}" for k, c in zip(keys, cols)) + f"{'Δ ' + headline:>14}"]
    for name, entry in table.items():
        mean = entry["mean"]
        delta = f"{mean[headline] - base:+.4f}" if base is not None else "-"
        lines.append(f"{name:<{width}}" + "".join(f"{mean[k]:>{c}.4f}" for k, c in zip(keys, cols)) + f"{delta:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, postprocess="none")  # raw probabilities
    refiner = load_model(args.refiner).to(segmenter.device).eval() if args.refiner else None
    chain = args.steps or [s for s in DEFAULT_CHAIN if s != "refine" or refiner is not None]
    if segmenter.schema.multilabel:
        raise SystemExit("the post-processing table is for binary and multi-class models")
    samples = read_split(args.data, args.split)[: args.limit]
    table = postprocess_table(segmenter, samples, args.mask_encoding, variants(chain), refiner, args.tta)
    print(f"{args.model} on {args.split} ({len(samples)} images{', TTA' if args.tta else ''})")
    print(format_table(table))
    result = {"model": str(args.model), "split": args.split, "n": len(samples), "tta": args.tta,
              "refiner": args.refiner, "table": table}
    if args.record:
        if Path(args.split).stem.startswith("test"):
            log.warning("recording a chain chosen on a test split: report test figures measured on other images")
        steps = helpful_steps(table, chain, args.min_gain)
        folder = resolve_weights(args.model)
        path = record_postprocess(folder, steps, args.refiner if "refine" in steps else None)
        result["recorded"] = steps
        print(f"recorded post-processing in {path}: {' '.join(steps) or 'none (no step helped)'}")
        warn_if_test_split(args.split, "post-processing")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
