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

import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .cli import add_postprocess_argument, add_threshold_argument, postprocess_from_args, setup_logging, write_json
from .data import Sample, pairs_from_folders, read_sample_mask, read_split
from .inference import Segmenter
from .io import decode_mask, read_image
from .labels import MASK_ENCODINGS, LabelSchema
from .metrics import (
    BINARY_METRICS,
    class_pixel_counts,
    lesion_free_summary,
    mean_metrics,
    segmentation_metrics,
    split_class_dice,
    threshold_sweep_dice,
)

__all__ = ["evaluate_samples", "format_table", "main", "row_means", "scores_against_mask_image"]

log = logging.getLogger("medseg.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="medseg-evaluate",
                                description="Evaluate a segmentation model on a split or a folder of image/mask pairs.")
    p.add_argument("--model", required=True, help="weights folder, a name under weights/, or a Hub repo id")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/ (with --split)")
    p.add_argument("--split", help="split name (e.g. test-kvasir) or path to a split .txt file")
    p.add_argument("--images", help="folder of images (instead of --split)")
    p.add_argument("--masks", help="folder of masks matching --images by file name")
    p.add_argument("--mask-encoding", choices=MASK_ENCODINGS, default=None,
                   help="how the masks store classes (default: the mask_encoding of the weights' label schema)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--tta-scales", type=float, nargs="+", metavar="F", default=None,
                   help="run the TTA flips at these factors of the input size, e.g. 0.82 1 1.18 (implies --tta; "
                        "default: the tta_scales recorded with the weights, else 1); torch backend only")
    add_threshold_argument(p)
    p.add_argument("--class-bias", type=float, nargs="+", metavar="B", default=None,
                   help="multi-class models: one log-odds offset per class for choosing a lesion's class, e.g. 0 0 0 "
                        "for plain argmax (default: the class_bias recorded with the weights, else none)")
    add_postprocess_argument(p)
    p.add_argument("--pranet-mean-dice", action="store_true",
                   help="also report the PraNet-protocol Dice averaged over thresholds 0..255 (labelled as such)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", help="write mean and per-image metrics to this JSON file")
    p.add_argument("--csv", help="write per-image metrics to this CSV file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: this process's accelerator device)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="inference precision")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="network engine (auto: onnxruntime when the weights folder has model.onnx)")
    args = p.parse_args(argv)
    if bool(args.split) == bool(args.images):
        p.error("give either --split or --images/--masks")
    if args.images and not args.masks:
        p.error("--images needs --masks")
    args.postprocess = postprocess_from_args(p, args.postprocess)
    args.tta = args.tta or args.tta_scales is not None
    return args


def evaluate_samples(segmenter: Segmenter, samples: Sequence[Sample], mask_encoding: str | None = None,
                     tta: bool = False, postprocess: Any = None, pranet: bool = False,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Per-image metric rows for the given samples: the lesion metrics (any class against background) and, for
    multi-class and multi-label schemas, ``dice_<class>``/``iou_<class>`` and the pixel counts behind the
    split-level ``class_dice_<class>``; ``n_lesion_truth``/``n_lesion_pred``, the lesion pixels of the ground
    truth and of the prediction (see :func:`~medseg_core.metrics.lesion_free_summary`). ``mask_encoding``
    overrides the schema's; ``postprocess``: None keeps the segmenter's default."""
    schema: LabelSchema = segmenter.schema
    per_class = {} if schema.task == "binary" else {"class_names": schema.foreground, "multilabel": schema.multilabel}
    rows = []
    for s in tqdm(samples, desc="evaluate", disable=not progress):
        image = read_image(s.image)
        target = read_sample_mask(s, schema, image.shape[:2], mask_encoding)
        result = segmenter(image, tta=tta, postprocess=postprocess)
        row: dict[str, Any] = {"id": s.id}
        if per_class:
            row.update(segmentation_metrics(result.mask, target, **per_class))
            row.update(class_pixel_counts(result.mask, target, **per_class))
        else:
            row.update(segmentation_metrics(result.mask, target))
        lesion = target.any(axis=0) if schema.multilabel else target > 0
        row["n_lesion_truth"] = int(lesion.sum())
        row["n_lesion_pred"] = int((result.mask.any(axis=0) if schema.multilabel else result.mask > 0).sum())
        if pranet:
            row["pranet_mean_dice"] = threshold_sweep_dice(result.confidence, lesion)
        row["ms"] = result.stats["inference_ms"]
        rows.append(row)
    return rows


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


def format_table(title: str, means: dict[str, float], n: int) -> str:
    """The means as a one-row table, then (for multi-class and multi-label models) one row per class: per-image
    Dice and IoU and the split-level Dice."""
    keys = [k for k in (*BINARY_METRICS, "mdice", "miou", "class_dice", "pranet_mean_dice") if k in means]
    widths = [max(10, len(k)) + 2 for k in keys]
    head = f"{'split':<24}{'n':>5}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths))
    line = f"{title:<24}{n:>5}" + "".join(f"{means[k]:>{w}.4f}" for k, w in zip(keys, widths))
    if means.get("lesion_free_images"):
        line += (f"\n{means['lesion_free_images']} images without a lesion, a lesion drawn on "
                 f"{means['false_alarms']}; Dice over the {n - means['lesion_free_images']} images with one: "
                 f"{means.get('dice_lesion_images', float('nan')):.4f}")
    classes = [k[len("class_dice_"):] for k in means if k.startswith("class_dice_")]
    if not classes:
        return f"{head}\n{line}"
    rows = [f"{'class':<24}{'dice':>12}{'iou':>12}{'split dice':>12}"]
    rows += [f"{c:<24}{means.get(f'dice_{c}', float('nan')):>12.4f}{means.get(f'iou_{c}', float('nan')):>12.4f}"
             f"{means[f'class_dice_{c}']:>12.4f}" for c in classes]
    return "\n".join([head, line, "", *rows])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_logging()
    state = PartialState()
    try:
        segmenter = Segmenter.from_pretrained(args.model, device=args.device or str(state.device),
                                              precision=args.precision, backend=args.backend,
                                              postprocess=args.postprocess, threshold=args.threshold,
                                              tta_scales=args.tta_scales, class_bias=args.class_bias)
    except ValueError as err:  # a bad threshold, TTA scale, class bias or backend for these weights: say which
        raise SystemExit(f"medseg-evaluate: {err}") from err
    log.info("post-processing: %s; threshold %s; class bias %s", " ".join(segmenter.postprocess) or "none",
             segmenter.threshold, segmenter.class_bias)
    samples = read_split(args.data, args.split) if args.split else pairs_from_folders(args.images, args.masks)
    samples = samples[: args.limit]
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
    title = Path(args.split).stem if args.split else Path(args.images).name
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
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return result


if __name__ == "__main__":
    main()
