"""Settings chosen on validation splits and recorded with the weights (``medseg-calibrate``).

    medseg-calibrate --model unet_lite2.polyp --split polyp-val --what postprocess --record
    medseg-calibrate --model unet_lite2.neopolyp --split neopolyp-full-val --what class-bias --record
    medseg-calibrate --model unet_lite0.edd2020 --split edd-val --what thresholds --record
    medseg-calibrate --model unet_lite2.polyp --split polyp-val polyp-negative-val --what presence \
        --specificity 0.95 --plot runs/presence.png --json runs/presence.json --record

Each ``--what`` runs the network once per image and compares candidate settings on the same probabilities:

- ``postprocess`` (binary and multi-class models): Dice with no post-processing, with each step of the chain alone
  and with the whole chain (:func:`postprocess_table`); the steps that alone raise the headline score (the
  split-level class Dice of a multi-class model, else the lesion Dice) by ``--min-gain`` are recorded, in chain
  order (nnU-Net's ``determine_postprocessing``).
- ``class-bias`` (multi-class models with two or more lesion classes): a log-odds offset per lesion class for
  choosing a lesion's class (never where the lesion is), swept over ``--grid`` one class at a time under each chain
  of ``--chains``, scored by the mean split-level Dice of the lesion classes (:func:`sweep_class_bias`); the best
  offsets and their chain are recorded.
- ``thresholds`` (multi-label models): one probability threshold per class, the one of ``--grid`` with the best
  split-level Dice of that class on raw masks (nearer 0.5 on a tie; :func:`sweep_thresholds`).
- ``presence``: the image-level "lesion present" rule (:mod:`medseg_core.presence`) with the highest per-lesion
  sensitivity among the rules whose frame specificity on the splits' lesion-free frames reaches ``--specificity``.

``--record`` writes the choice into the weights' ``config.json``, where ``Segmenter.from_pretrained``, the app,
batch, video and every command read it. Choose on validation splits: the test splits are read once, afterwards, by
``medseg-evaluate``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .cli import UsageError, warn_if_test_split, write_json
from .data import Sample, read_sample_mask, read_splits
from .evaluation import evaluate_samples, write_sweep
from .hub import (
    load_model,
    record_class_bias,
    record_postprocess,
    record_presence,
    record_thresholds,
    recorded_postprocess,
    resolve_weights,
)
from .inference import Segmenter, check_class_bias
from .io import read_image
from .labels import LabelSchema
from .metrics import class_pixel_counts, dice_score, per_class_metrics, split_class_dice
from .models import SegModel
from .postprocess import apply_postprocessing, headline_metric, helpful_steps
from .presence import choose_presence

__all__ = ["DEFAULT_BIAS_GRID", "DEFAULT_CHAIN", "DEFAULT_THRESHOLD_GRID", "calibrate_class_bias",
           "calibrate_postprocess", "calibrate_presence", "calibrate_thresholds", "choose_thresholds", "main",
           "format_postprocess_table", "postprocess_table", "postprocess_variants", "run", "sweep_class_bias",
           "sweep_thresholds"]

log = logging.getLogger("medseg.calibrate")

#: The post-processing chain tried, in order: clean up, make classes consistent, then refine each remaining region
#: (the reference design applies its refinement network last; ``refine`` only with a refiner).
DEFAULT_CHAIN = ("remove_small_components", "fill_holes", "adaptive_morphology", "region_class_consistency", "refine")
#: Log-odds offsets tried for each lesion class (``--what class-bias``).
DEFAULT_BIAS_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
#: Probability thresholds tried for each class (``--what thresholds``); 0.5 is always among them.
DEFAULT_THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: Post-processing chains tried with the class bias.
DEFAULT_BIAS_CHAINS = ("none", "region_class_consistency")


def _prediction(segmenter: Segmenter, sample: Sample, tta: bool = False,
                mask_encoding: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, ground truth, class probabilities) of one sample; the network runs once."""
    image = read_image(sample.image)
    truth = read_sample_mask(sample, segmenter.schema, image.shape[:2], mask_encoding)
    return image, truth, segmenter.predict_probs(image, tta=tta)[0]


# ---- --what postprocess ----------------------------------------------------------------------------------------------


def postprocess_variants(chain: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``none``, every step of the chain alone, and the full chain (when it has more than one step)."""
    out: dict[str, tuple[str, ...]] = {"none": ()}
    out.update({step: (step,) for step in chain})
    if len(chain) > 1:
        out["full chain"] = tuple(chain)
    return out


def _image_scores(pred: np.ndarray, target: np.ndarray, schema: LabelSchema) -> dict[str, float]:
    """Lesion Dice, plus for multi-class masks per-class Dice, their mean and the pixel counts behind the split-level
    class Dice (as ``medseg-evaluate`` names them)."""
    scores = {"dice": dice_score(pred > 0, target > 0)}
    if schema.task == "multiclass":
        scores.update({k: v for k, v in per_class_metrics(pred, target, class_names=schema.foreground).items()
                       if k.startswith("dice_") or k == "mdice"})
        scores.update(class_pixel_counts(pred, target, class_names=schema.foreground))
    return scores


def postprocess_table(segmenter: Segmenter, samples: Sequence[Sample], chains: dict[str, tuple[str, ...]],
                      refiner: SegModel | None = None, tta: bool = False, mask_encoding: str | None = None,
                      progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every variant's scores over the samples, with the per-image rows: ``{variant: {"steps", "mean",
    "per_image"}}``. ``mean`` holds per-image means (Dice at the original resolution) and, for multi-class models,
    the split-level ``class_dice_<class>`` and ``class_dice``. Every variant post-processes the same probabilities,
    so the differences are the steps' alone."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in chains}
    for s in tqdm(samples, desc="post-processing table", disable=not progress):
        image, target, probs = _prediction(segmenter, s, tta, mask_encoding)
        raw = segmenter.mask_from_probs(probs)
        for name, steps in chains.items():
            pred = apply_postprocessing(raw, steps, probs, image=image, refiner=refiner)
            rows[name].append({"id": s.id, **_image_scores(pred, target, segmenter.schema)})
    table = {}
    for name, per_image in rows.items():
        keys = [k for k in per_image[0] if k != "id" and not k.startswith("n_")]
        mean = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
        table[name] = {"steps": list(chains[name]), "mean": {**mean, **split_class_dice(per_image)},
                       "per_image": per_image}
    return table


def format_postprocess_table(table: dict[str, dict[str, Any]]) -> str:
    """One row per variant; the last column is the change of the headline score against ``none``."""
    first = next(iter(table.values()))["mean"]
    keys = ["dice", *sorted(k for k in first if k.startswith("dice_")), *(["mdice"] if "mdice" in first else []),
            *sorted(k for k in first if k.startswith("class_dice_")),
            *(["class_dice"] if "class_dice" in first else [])]
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


def calibrate_postprocess(segmenter: Segmenter, samples: Sequence[Sample], steps: Sequence[str] | None = None,
                          refiner: SegModel | None = None, min_gain: float = 0.001, tta: bool = False,
                          mask_encoding: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The post-processing table of ``steps`` (default :data:`DEFAULT_CHAIN`, ``refine`` only with a refiner) on
    raw masks (``segmenter`` built with ``postprocess="none"``) and the steps that helped by ``min_gain``:
    ``{"chain", "table", "chosen"}``."""
    if segmenter.schema.multilabel:
        raise UsageError(f"medseg-calibrate: --what postprocess is for binary and multi-class models; "
                         f"{segmenter.name} is multi-label")
    chain = list(steps or [s for s in DEFAULT_CHAIN if s != "refine" or refiner is not None])
    if "refine" in chain and refiner is None:
        raise UsageError("medseg-calibrate: the refine step needs --refiner")
    table = postprocess_table(segmenter, samples, postprocess_variants(chain), refiner, tta, mask_encoding, progress)
    return {"chain": chain, "table": table, "chosen": helpful_steps(table, chain, min_gain)}


# ---- --what class-bias -----------------------------------------------------------------------------------------------


def _class_dice(segmenter: Segmenter, cache: Sequence[tuple], bias: Sequence[float], chain: Sequence[str]) -> float:
    """Mean split-level Dice of the lesion classes with this bias and post-processing chain."""
    segmenter.class_bias = check_class_bias(bias, segmenter.schema)
    names = segmenter.schema.foreground
    rows = [class_pixel_counts(segmenter.processed_mask(image, probs, list(chain) or "none")[0], truth,
                               class_names=names) for image, truth, probs in cache]
    return split_class_dice(rows)["class_dice"]


def sweep_class_bias(segmenter: Segmenter, cache: Sequence[tuple], grid: Sequence[float],
                     chain: Sequence[str]) -> tuple[list[float], float, list[dict[str, Any]]]:
    """Coordinate sweep of the lesion classes' offsets over ``grid`` (the first lesion class and the background stay
    at 0; each class is tried with the others at their best so far, smaller offsets first, so a tie keeps the
    smaller): the best offsets, their Dice and every point tried. ``cache`` holds (image, truth, probs)."""
    n = len(segmenter.schema.class_names)
    best = [0.0] * n
    best_dice = _class_dice(segmenter, cache, best, chain)
    tried = [{"bias": list(best), "class_dice": best_dice}]
    for c in range(2, n):
        for b in sorted(grid, key=abs):
            trial = best[:c] + [float(b)] + best[c + 1:]
            if trial == best:
                continue
            dice = _class_dice(segmenter, cache, trial, chain)
            tried.append({"bias": trial, "class_dice": dice})
            if dice > best_dice + 1e-9:
                best, best_dice = trial, dice
    return best, best_dice, tried


def calibrate_class_bias(segmenter: Segmenter, samples: Sequence[Sample], grid: Sequence[float] = DEFAULT_BIAS_GRID,
                         chains: Sequence[Sequence[str]] = ((), ("region_class_consistency",)),
                         progress: bool = True) -> dict[str, Any]:
    """The class bias and chain with the best mean split-level Dice of the lesion classes (ties: the smaller offsets,
    then the shorter chain), beside plain argmax: ``{"classes", "class_dice_plain", "results", "chosen"}``."""
    schema = segmenter.schema
    if schema.task != "multiclass" or len(schema.class_names) < 3:
        raise UsageError(f"medseg-calibrate: --what class-bias is for multi-class models with two or more lesion "
                         f"classes; {segmenter.name} is a {schema.task} model with {len(schema.class_names)} classes")
    if any(abs(b) > 10 for b in grid):
        raise UsageError("medseg-calibrate: class-bias --grid offsets must lie from -10 to 10")
    cache = [_prediction(segmenter, s) for s in tqdm(samples, desc="predict", unit="image", disable=not progress)]
    plain = _class_dice(segmenter, cache, [0.0] * len(schema.class_names), [])
    results = []
    for chain in chains:
        bias, dice, tried = sweep_class_bias(segmenter, cache, grid, chain)
        results.append({"chain": list(chain), "bias": bias, "class_dice": dice, "tried": tried})
    best = max(results, key=lambda r: (round(r["class_dice"], 9), -sum(map(abs, r["bias"])), -len(r["chain"])))
    return {"classes": list(schema.class_names), "grid": list(grid), "class_dice_plain": plain, "results": results,
            "chosen": {"postprocess": best["chain"], "class_bias": best["bias"], "class_dice": best["class_dice"]}}


# ---- --what thresholds -----------------------------------------------------------------------------------------------


def sweep_thresholds(segmenter: Segmenter, samples: Sequence[Sample], grid: Sequence[float],
                     progress: bool = True) -> np.ndarray:
    """Split-level Dice (len(grid), K) of every class at every threshold, on raw masks: the pixel counts and the
    ``class_dice_<class>`` of ``medseg-evaluate`` (:func:`medseg_core.metrics.split_class_dice`)."""
    names = segmenter.schema.foreground
    rows: list[list[dict[str, int]]] = [[] for _ in grid]
    for sample in tqdm(samples, desc="threshold sweep", unit="image", disable=not progress):
        _, truth, probs = _prediction(segmenter, sample)
        for t, threshold in enumerate(grid):
            rows[t].append(class_pixel_counts(probs > threshold, truth, class_names=names, multilabel=True))
    return np.array([[split_class_dice(r)[f"class_dice_{n}"] for n in names] for r in rows])


def choose_thresholds(dice: np.ndarray, grid: Sequence[float]) -> list[float]:
    """The best threshold of each class (a column of ``dice``); among equal Dice the one nearest 0.5."""
    order = np.argsort(np.abs(np.asarray(grid) - 0.5), kind="stable")
    return [float(grid[order[np.argmax(dice[order, c])]]) for c in range(dice.shape[1])]


def calibrate_thresholds(segmenter: Segmenter, samples: Sequence[Sample],
                         grid: Sequence[float] = DEFAULT_THRESHOLD_GRID, progress: bool = True) -> dict[str, Any]:
    """Per-class thresholds of a multi-label model and the split-level Dice at them and at 0.5:
    ``{"classes", "grid", "dice", "thresholds", "class_dice_at_0.5", "class_dice_at_thresholds"}``."""
    if not segmenter.schema.multilabel:
        raise UsageError(f"medseg-calibrate: --what thresholds is for multi-label models; {segmenter.name} is a "
                         f"{segmenter.schema.task} model")
    if not all(0.0 < t < 1.0 for t in grid):
        raise UsageError("medseg-calibrate: thresholds --grid values must lie strictly between 0 and 1")
    grid = sorted(set(map(float, grid)) | {0.5})
    dice = sweep_thresholds(segmenter, samples, grid, progress)
    chosen = choose_thresholds(dice, grid)
    at_half = dice[grid.index(0.5)]
    at_chosen = np.array([dice[grid.index(t), c] for c, t in enumerate(chosen)])
    return {"classes": list(segmenter.schema.foreground), "grid": grid, "dice": dice.round(6).tolist(),
            "thresholds": chosen, "class_dice_at_0.5": float(at_half.mean()),
            "class_dice_at_thresholds": float(at_chosen.mean())}


# ---- --what presence -------------------------------------------------------------------------------------------------


def calibrate_presence(segmenter: Segmenter, rows: list[dict[str, Any]], specificity: float,
                       splits: list[str]) -> dict[str, Any]:
    """The rule :func:`~medseg_core.presence.choose_presence` picks on evaluated rows (taken without any presence
    rule), as ``config.json`` records it (with ``chosen_on`` and ``specificity``), and its figures."""
    try:
        chosen = choose_presence([r["presence"] for r in rows], specificity)
    except ValueError as err:
        raise UsageError(f"medseg-calibrate: {err}") from err
    rule = {**chosen["rule"].to_config(), "chosen_on": [Path(s).stem for s in splits], "specificity": specificity}
    return {"rule": rule, "metrics": chosen["metrics"], "candidates": chosen["candidates"]}


# ---- the command -----------------------------------------------------------------------------------------------------


def _run_postprocess(args: argparse.Namespace, samples: list[Sample], title: str) -> dict[str, Any]:
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, backend=args.backend, postprocess="none")
    refiner = load_model(args.refiner).to(segmenter.device).eval() if args.refiner else None
    result = calibrate_postprocess(segmenter, samples, args.steps, refiner, args.min_gain, args.tta,
                                   args.mask_encoding, progress=not args.no_progress)
    print(f"{segmenter.name} on {title} ({len(samples)} images{', TTA' if args.tta else ''})")
    print(format_postprocess_table(result["table"]))
    print(f"chosen: {' '.join(result['chosen']) or 'none (no step helped)'}")
    if args.record:
        steps = result["chosen"]
        result["recorded_in"] = str(record_postprocess(resolve_weights(args.model), steps,
                                                       args.refiner if "refine" in steps else None))
    return {**result, "tta": args.tta, "refiner": args.refiner}


def _run_class_bias(args: argparse.Namespace, samples: list[Sample], title: str) -> dict[str, Any]:
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, backend=args.backend, postprocess="none")
    chains = [[] if c == "none" else c.split("+") for c in args.chains]
    result = calibrate_class_bias(segmenter, samples, args.grid or DEFAULT_BIAS_GRID, chains,
                                  progress=not args.no_progress)
    print(f"{segmenter.name} on {title} ({len(samples)} images), mean split-level Dice of the lesion classes")
    print(f"{'chain':<40}{'bias':>24}{'class Dice':>12}")
    print(f"{'none (plain argmax)':<40}{'':>24}{result['class_dice_plain']:>12.4f}")
    for r in result["results"]:
        bias = " ".join(f"{b:g}" for b in r["bias"])
        print(f"{'+'.join(r['chain']) or 'none':<40}{bias:>24}{r['class_dice']:>12.4f}")
    chosen = result["chosen"]
    print(f"chosen: {'+'.join(chosen['postprocess']) or 'none'}, bias {chosen['class_bias']}")
    if args.record:
        folder = resolve_weights(args.model)
        record_class_bias(folder, chosen["class_bias"])
        refiner = recorded_postprocess(folder)["refiner"] if "refine" in chosen["postprocess"] else None
        result["recorded_in"] = str(record_postprocess(folder, chosen["postprocess"], refiner))
    return result


def _run_thresholds(args: argparse.Namespace, samples: list[Sample], title: str) -> dict[str, Any]:
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, backend=args.backend, postprocess="none",
                                          threshold=0.5)
    result = calibrate_thresholds(segmenter, samples, args.grid or DEFAULT_THRESHOLD_GRID,
                                  progress=not args.no_progress)
    grid, dice = result["grid"], np.asarray(result["dice"])
    print(f"{segmenter.name} on {title} ({len(samples)} images), split-level Dice per class")
    print(f"{'class':<14}{'at 0.5':>8}{'threshold':>11}{'Dice':>8}")
    for c, (name, t) in enumerate(zip(result["classes"], result["thresholds"])):
        print(f"{name:<14}{dice[grid.index(0.5), c]:>8.4f}{t:>11.2f}{dice[grid.index(t), c]:>8.4f}")
    print(f"{'mean':<14}{result['class_dice_at_0.5']:>8.4f}{'':>11}{result['class_dice_at_thresholds']:>8.4f}")
    if args.record:
        result["recorded_in"] = str(record_thresholds(resolve_weights(args.model), result["thresholds"]))
    return result


def _run_presence(args: argparse.Namespace, samples: list[Sample], title: str) -> dict[str, Any]:
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, backend=args.backend,
                                          apply_presence="none")
    rows = evaluate_samples(segmenter, samples, presence="none", progress=not args.no_progress)
    result = calibrate_presence(segmenter, rows, args.specificity, args.split)
    m, rule = result["metrics"], result["rule"]
    print(f"{segmenter.name} on {title} ({len(rows)} images): lesion present when the {rule['score']} confidence of "
          f"a region is >= {rule['threshold']:g}" + (f" and it covers >= {100 * rule['min_area']:g} % of the image"
                                                      if rule["min_area"] else ""))
    print(f"  frame specificity {m['frame_specificity']:.4f} ({m['false_alarm_frames']} of {m['lesion_free_frames']} "
          f"lesion-free frames drawn on), per-lesion sensitivity {m['lesion_sensitivity']:.4f} "
          f"({m['lesions_detected']} of {m['truth_lesions']}), mean Dice at the rule {m['dice_at_rule']:.4f}")
    if args.plot:
        from .presence import PresenceRule

        write_sweep(args.plot, rows, PresenceRule.from_config(rule), f"{segmenter.name} on {title}")
    if args.record:
        result["recorded_in"] = str(record_presence(resolve_weights(args.model), rule))
    return result


_RUNS = {"postprocess": _run_postprocess, "class-bias": _run_class_bias, "thresholds": _run_thresholds,
         "presence": _run_presence}
_WHAT_NAMES = {"postprocess": "post-processing", "class-bias": "class bias and post-processing",
               "thresholds": "thresholds", "presence": "a presence rule"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``medseg-calibrate`` on parsed arguments (see ``medseg_core.commands.parse_calibrate_args``): the choice and
    its figures on stdout and in ``--json``; ``--record`` writes it into the weights' ``config.json``."""
    for split in args.split:
        warn_if_test_split(split, _WHAT_NAMES[args.what])
    samples = read_splits(args.data, args.split)[: args.limit]
    if not samples:
        raise UsageError(f"medseg-calibrate: no images in {' '.join(args.split)}")
    title = "+".join(Path(s).stem for s in args.split)
    result = _RUNS[args.what](args, samples, title)
    if "recorded_in" in result:
        print(f"recorded in {result['recorded_in']}")
    out = {"model": str(args.model), "split": title, "splits": list(args.split), "n": len(samples), "what": args.what,
           **result}
    write_json(args.json, out)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Calibrate as the command line ``argv`` says (see ``medseg-calibrate --help``); returns what ``--json``
    writes."""
    from .commands import parse_calibrate_args

    return run(parse_calibrate_args(argv))


if __name__ == "__main__":
    from .commands import calibrate as calibrate_command

    raise SystemExit(calibrate_command())
