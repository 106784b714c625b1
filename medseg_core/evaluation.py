"""Measure a model on a split or on any folder of images and masks, through the same Segmenter as the app.

    medseg-evaluate --model unet_lite2.polyp --data ../shared/data --split test-kvasir --json out.json
    medseg-evaluate --model runs/x/model --images DIR --masks DIR --csv per_image.csv
    accelerate launch --num_processes 4 train/evaluate.py ...   (each process takes a share of the images)

Metrics are per image at the original resolution, then averaged: Dice, IoU, accuracy, precision, recall, HD95
(pixels); with more than two classes, per-class Dice/IoU too.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .cli import UsageError, setup_logging, write_json
from .commands import evaluate as evaluate_command
from .commands import parse_evaluate_args
from .data import Sample, pairs_from_folders, read_sample_mask, read_splits
from .inference import Segmenter
from .io import decode_mask, read_image
from .labels import LabelSchema
from .metrics import (
    BINARY_METRICS,
    class_pixel_counts,
    lesion_free_summary,
    mean_metrics,
    segmentation_metrics,
    split_class_dice,
    threshold_sweep_dice,
)
from .presence import PresenceRule, apply_presence, presence_metrics, presence_sweep, region_records
from .visualize import tradeoff_chart

__all__ = ["evaluate_samples", "format_table", "main", "row_means", "run", "scores_against_mask_image"]

log = logging.getLogger("medseg.evaluate")


def evaluate_samples(segmenter: Segmenter, samples: Sequence[Sample], mask_encoding: str | None = None,
                     tta: bool = False, postprocess: Any = None, pranet: bool = False,
                     progress: bool = True, presence: str | None = None) -> list[dict[str, Any]]:
    """Per-image metric rows for the given samples: the lesion metrics (any class against background) and, for
    multi-class and multi-label schemas, ``dice_<class>``/``iou_<class>`` and the pixel counts behind the
    split-level ``class_dice_<class>``; ``n_lesion_truth``/``n_lesion_pred``, the lesion pixels of the ground
    truth and of the prediction (see :func:`~medseg_core.metrics.lesion_free_summary`); ``presence``, the
    image-level decision (``lesion_present``, ``score``) and the region records every presence figure is computed
    from (:func:`~medseg_core.presence.region_records`, taken before the decision, so that any other rule can be
    scored later). ``mask_encoding`` overrides the schema's; ``postprocess`` and ``presence`` (``"recorded"`` or
    ``"none"``): None keeps the segmenter's default."""
    schema: LabelSchema = segmenter.schema
    per_class = {} if schema.task == "binary" else {"class_names": schema.foreground, "multilabel": schema.multilabel}
    rule = segmenter.presence_rule(presence)
    rows = []
    for s in tqdm(samples, desc="evaluate", disable=not progress):
        image = read_image(s.image)
        target = read_sample_mask(s, schema, image.shape[:2], mask_encoding)
        result = segmenter(image, tta=tta, postprocess=postprocess, presence="none")
        records = region_records(result.mask, result.confidence, target)
        mask, decision = apply_presence(result.mask, result.confidence, rule)
        row: dict[str, Any] = {"id": s.id}
        if per_class:
            row.update(segmentation_metrics(mask, target, **per_class))
            row.update(class_pixel_counts(mask, target, **per_class))
        else:
            row.update(segmentation_metrics(mask, target))
        lesion = target.any(axis=0) if schema.multilabel else target > 0
        row["n_lesion_truth"] = int(lesion.sum())
        row["n_lesion_pred"] = int((mask.any(axis=0) if schema.multilabel else mask > 0).sum())
        if pranet:
            row["pranet_mean_dice"] = threshold_sweep_dice(result.confidence, lesion)
        row["ms"] = result.stats["inference_ms"]
        row["presence"] = {"lesion_present": decision["lesion_present"], "score": decision["presence_score"],
                           **records}
        rows.append(row)
    return rows


def presence_summary(rows: Sequence[dict[str, Any]], rule: PresenceRule | None) -> dict[str, Any]:
    """The presence figures of evaluated rows at ``rule`` (:func:`~medseg_core.presence.presence_metrics`) under
    ``presence_*`` keys, with the rule itself; empty for rows without region records."""
    if not rows or "presence" not in rows[0]:
        return {}
    figures = presence_metrics([r["presence"] for r in rows], rule)
    out: dict[str, Any] = {f"presence_{k}": v for k, v in figures.items() if k not in ("frames", "dice_at_rule")}
    out["presence_rule"] = rule.to_config() if rule else None
    return out


def row_means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The per-image means of :func:`evaluate_samples` rows: every metric, without the id, the timing and the pixel
    counts (``n_*``, which feed the split-level figures instead)."""
    return mean_metrics([{k: v for k, v in r.items() if k not in ("id", "ms") and not k.startswith("n_")}
                         for r in rows])


def scores_against_mask_image(mask: np.ndarray, truth: np.ndarray, schema: LabelSchema) -> dict[str, float]:
    """Metrics of a predicted mask against one ground-truth mask image (as a user uploads it, RGB): decoded with
    the schema's encoding (``indexed`` for multi-class schemas stored otherwise); for a multi-label schema, whose
    overlapping classes one image cannot hold, the lesion metrics (any class against background) only."""
    if schema.multilabel:
        return segmentation_metrics(mask.any(axis=0).astype(np.uint8), decode_mask(truth, "binary"))
    if schema.task == "binary":
        return segmentation_metrics(mask, decode_mask(truth, "binary"))
    encoding = schema.mask_encoding if schema.mask_encoding in ("indexed", "palette") else "indexed"
    return segmentation_metrics(mask, decode_mask(truth, encoding, schema), class_names=schema.foreground)


def presence_line(means: dict[str, Any]) -> str:
    """The presence figures of :func:`presence_summary` as lines under the table (empty without them)."""
    if "presence_truth_lesions" not in means:
        return ""
    rule = means.get("presence_rule")
    text = ("\nlesion present: " + (PresenceRule.from_config(rule).describe() if rule else "any region (no rule)"))
    if means.get("presence_lesion_free_frames"):
        text += (f"\n  frame specificity {means['presence_frame_specificity']:.4f} "
                 f"({means['presence_false_alarm_frames']} of {means['presence_lesion_free_frames']} lesion-free "
                 f"frames drawn on); false-positive regions per lesion-free frame "
                 f"{means['presence_fp_regions_per_free_frame']:.3f}")
    if means.get("presence_truth_lesions"):
        text += (f"\n  per-lesion sensitivity {means['presence_lesion_sensitivity']:.4f} "
                 f"({means['presence_lesions_detected']} of {means['presence_truth_lesions']} lesions touched)")
    return text + f"; false-positive regions per frame {means['presence_fp_regions_per_frame']:.3f}"


def format_table(title: str, means: dict[str, float], n: int) -> str:
    """The means as a one-row table, then (for multi-class and multi-label models) one row per class: per-image
    Dice and IoU and the split-level Dice."""
    keys = [k for k in (*BINARY_METRICS, "mdice", "miou", "class_dice", "pranet_mean_dice") if k in means]
    widths = [max(10, len(k)) + 2 for k in keys]
    first = max(24, len(title) + 2)
    head = f"{'split':<{first}}{'n':>5}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths))
    line = f"{title:<{first}}{n:>5}" + "".join(f"{means[k]:>{w}.4f}" for k, w in zip(keys, widths))
    if means.get("lesion_free_images") and "dice_lesion_images" in means:
        line += (f"\nDice over the {n - means['lesion_free_images']} images with a lesion (without the "
                 f"{means['lesion_free_images']} lesion-free ones): {means['dice_lesion_images']:.4f}")
    line += presence_line(means)
    classes = [k[len("class_dice_"):] for k in means if k.startswith("class_dice_")]
    if not classes:
        return f"{head}\n{line}"
    rows = [f"{'class':<24}{'dice':>12}{'iou':>12}{'split dice':>12}"]
    rows += [f"{c:<24}{means.get(f'dice_{c}', float('nan')):>12.4f}{means.get(f'iou_{c}', float('nan')):>12.4f}"
             f"{means[f'class_dice_{c}']:>12.4f}" for c in classes]
    return "\n".join([head, line, "", *rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Evaluate as the command line ``argv`` says (see ``medseg-evaluate --help``); returns the result that
    ``--json`` writes (``{}`` on processes other than the main one)."""
    return run(parse_evaluate_args(argv))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`main` on parsed arguments (``medseg-evaluate`` calls this)."""
    setup_logging()
    state = PartialState()
    # The images first: an unknown split or folder is a usage error, said before the model loads.
    samples = read_splits(args.data, args.split) if args.split else pairs_from_folders(args.images, args.masks)
    samples = samples[: args.limit]
    try:
        segmenter = Segmenter.from_pretrained(args.model, device=args.device or str(state.device),
                                              precision=args.precision, backend=args.backend,
                                              postprocess=args.postprocess, threshold=args.threshold,
                                              tta_scales=args.tta_scales, class_bias=args.class_bias,
                                              apply_presence=args.presence)
    except ValueError as err:  # a bad threshold, TTA scale, class bias or backend for these weights: say which
        raise UsageError(f"medseg-evaluate: {err}") from err
    log.info("post-processing: %s; threshold %s; class bias %s", " ".join(segmenter.postprocess) or "none",
             segmenter.threshold, segmenter.class_bias)
    started = time.time()
    with state.split_between_processes(samples) as shard:
        rows = evaluate_samples(segmenter, shard, args.mask_encoding, args.tta, None, args.pranet_mean_dice,
                                progress=state.is_local_main_process)
    rows = gather_object(rows)
    if not state.is_main_process:
        return {}
    means = row_means(rows)
    means.update(split_class_dice(rows))
    means.update(lesion_free_summary(rows))
    means.update(presence_summary(rows, segmenter.presence_rule()))
    title = "+".join(Path(s).stem for s in args.split) if args.split else Path(args.images).name
    result: dict[str, Any] = {
        "model": str(args.model),
        "split": title,
        "n": len(rows),
        **means,
        "ms_per_image": sum(r["ms"] for r in rows) / max(1, len(rows)),
        "seconds": time.time() - started,
        "tta": args.tta,
        "tta_sizes": segmenter.tta_sizes if args.tta else [],
        "inference_precision": args.precision,
        "backend": segmenter.backend.name,
        "postprocess": list(segmenter.postprocess),
        "threshold": segmenter.threshold,
        "class_bias": segmenter.class_bias,
        "labels": segmenter.schema.to_config(),
        "per_image": rows,
    }
    print(format_table(title, means, len(rows)))
    write_json(args.json, result)
    if args.sweep:
        write_sweep(args.sweep, rows, segmenter.presence_rule(), f"{segmenter.name} on {title}")
    if args.csv:
        flat = [{**{k: v for k, v in r.items() if k != "presence"}, "lesion_present": r["presence"]["lesion_present"],
                 "presence_score": r["presence"]["score"]} for r in rows]
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
    return result


def sweep_json_path(png: str | Path) -> Path:
    """Where the data of a trade-off PNG goes: ``X.png`` -> ``X_sweep.json`` (never a ``--json`` result's name)."""
    return Path(png).with_name(Path(png).stem + "_sweep.json")


def write_sweep(path: str | Path, rows: Sequence[dict[str, Any]], rule: PresenceRule | None, title: str) -> Path:
    """The presence trade-off of evaluated rows: :func:`~medseg_core.presence.presence_sweep` over the threshold of
    ``rule``'s score at its minimum area (the mean confidence and no minimum without a rule), drawn as a PNG at
    ``path`` with ``rule`` marked, and the data beside it (:func:`sweep_json_path`); returns the PNG's path."""
    records = [r["presence"] for r in rows]
    score, min_area = (rule.score, rule.min_area) if rule else ("mean", 0.0)
    sweep = presence_sweep(records, score, min_area)
    marked = {"threshold": rule.threshold, **presence_metrics(records, rule)} if rule else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(tradeoff_chart(sweep, marked, title, score), cv2.COLOR_RGB2BGR))
    write_json(sweep_json_path(path), {"title": title, "score": score, "min_area": min_area,
                                           "rule": rule.to_config() if rule else None, "at_rule": marked,
                                           "sweep": sweep})
    log.info("wrote %s and %s", path, sweep_json_path(path))
    return path


if __name__ == "__main__":
    raise SystemExit(evaluate_command())
