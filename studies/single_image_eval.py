"""How well does single-image training do, given a rough ROI like a clinician's? And how does a base model do?

    python studies/single_image_eval.py --n 50 --baseline weights/unet_lite0.polyp --json single_image.json

N test images are taken evenly from test-kvasir and test-clinicdb (the same ones on every run). The ROI of each
image is derived from its ground truth by a fixed rule that imitates a rough marking inside the lesion
(:func:`roi_from_ground_truth`): the lesion is eroded, a few points of the eroded outline are drawn at random,
and their convex hull (kept inside the eroded lesion) is the ROI. The method then sees only the image and that
ROI. Dice (lesion, threshold 0.5, at the original resolution) is reported as mean, median and worst decile (the
10th percentile), with the time per image (wall clock, and the process's CPU time, which a busy machine does not
inflate); ``--baseline`` runs a trained model on the same images.

Multi-label data (EDD2020) names the classes that make up the lesion, and the recipe that says how its masks are
stored; every test image with one of those classes is used (``--n`` caps the count):

    python studies/single_image_eval.py --splits edd-test --classes BE HGD cancer \
        --recipe train/configs/unet_lite0_edd2020.yaml --baseline runs/unet_lite0.edd2020/model --json edd.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from medseg_core.config import load_config, recipe_schema
from medseg_core.data import Sample, read_sample_mask, read_split
from medseg_core.inference import Segmenter
from medseg_core.io import read_image, read_mask
from medseg_core.labels import LabelSchema
from medseg_core.metrics import class_planes, dice_score
from medseg_core.single_image import SingleImageConfig, roi_from_ground_truth, segment_single_image, write_result

log = logging.getLogger("medseg.bench.single_image")


def pick_samples(data_root: str, splits: list[str], n: int) -> list[Sample]:
    """``n`` samples spread evenly over the splits (the first split gets the remainder), evenly within each."""
    picked: list[Sample] = []
    for i, split in enumerate(splits):
        samples = read_split(data_root, split)
        k = n // len(splits) + (1 if i < n % len(splits) else 0)
        idx = np.unique(np.linspace(0, len(samples) - 1, num=k).round().astype(int)) if k else []
        picked.extend(samples[j] for j in idx)
    return picked


def class_union(mask: np.ndarray, schema: LabelSchema, classes: list[str]) -> np.ndarray:
    """(H, W) bool: the union of ``classes`` in a mask in ``schema``'s layout (class indices or a 0/1 stack)."""
    planes = class_planes(mask, len(schema.foreground), schema.multilabel)
    return np.any([planes[schema.foreground.index(c)] for c in classes], axis=0)


def lesion_target(sample: Sample, schema: LabelSchema | None, classes: list[str] | None,
                  shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth lesion (H, W) bool: any foreground (binary data), or the union of ``classes``."""
    if not classes:
        return read_mask(sample.mask) > 0
    return class_union(read_sample_mask(sample, schema, shape), schema, classes)


def image_shape(sample: Sample) -> tuple[int, int]:
    """(H, W) from the image file's header, without decoding it."""
    with PIL.Image.open(sample.image) as im:
        return im.height, im.width


def pick_with_classes(data_root: str, splits: list[str], n: int, schema: LabelSchema,
                      classes: list[str]) -> list[Sample]:
    """Every sample of ``splits`` whose mask holds one of ``classes``, thinned evenly to ``n`` when there are more."""
    found = [s for split in splits for s in read_split(data_root, split)
             if lesion_target(s, schema, classes, image_shape(s)).any()]
    if len(found) > n:
        found = [found[j] for j in np.unique(np.linspace(0, len(found) - 1, num=n).round().astype(int))]
    return found


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, median, worst decile (10th percentile) and minimum."""
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "min": float(a.min())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SingleImageConfig()
    p = argparse.ArgumentParser(description="Single-image training on test images with ROIs derived from the ground "
                                "truth (a rough polygon inside the lesion); Dice distribution and time per image.")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--splits", nargs="+", default=["test-kvasir", "test-clinicdb"])
    p.add_argument("--n", type=int, default=50, help="number of images, spread evenly over the splits")
    p.add_argument("--classes", nargs="+", default=None,
                   help="multi-class or multi-label data: the classes whose union is the lesion (needs --recipe)")
    p.add_argument("--recipe", default=None, help="training recipe whose labels and mask encoding read the masks")
    p.add_argument("--steps", type=int, default=defaults.steps, help="training steps per image")
    p.add_argument("--max-side", type=int, default=defaults.max_side, help="work resolution (longer side)")
    p.add_argument("--roi-erode", type=float, default=0.25, help="erosion of the lesion, x its equivalent radius")
    p.add_argument("--roi-points", type=int, default=8, help="outline points whose hull is the ROI")
    p.add_argument("--baseline", default=None, help="also run this trained model (e.g. weights/unet_lite0.polyp)")
    p.add_argument("--baseline-only", action="store_true",
                   help="run only --baseline on the same images (no single-image training), e.g. for a new model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", default=None, help="folder for every image's ROI, mask, overlay and sampling record")
    p.add_argument("--json", default=None, help="write the summary and per-image rows to this JSON file")
    p.add_argument("--csv", default=None, help="write per-image rows to this CSV file")
    args = p.parse_args(argv)
    if args.baseline_only and not args.baseline:
        p.error("--baseline-only needs --baseline")
    if args.classes and not args.recipe:
        p.error("--classes needs --recipe (it says how the masks are stored and which classes exist)")
    return args


def summary_of(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Dice distribution and time per image of the method (and of the baseline, when it ran)."""
    summary: dict[str, Any] = {"n": len(rows), "splits": args.splits, "classes": args.classes, "steps": args.steps,
                               "max_side": args.max_side}
    if not args.baseline_only:
        summary["single_image"] = {**summarise([r["dice"] for r in rows]),
                                   "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
                                   "cpu_seconds_per_image": float(np.mean([r["cpu_seconds"] for r in rows]))}
    if args.baseline:
        summary["baseline"] = {"model": args.baseline, **summarise([r["baseline_dice"] for r in rows]),
                               "seconds_per_image": float(np.mean([r["baseline_seconds"] for r in rows])),
                               "cpu_seconds_per_image": float(np.mean([r["baseline_cpu_seconds"] for r in rows]))}
    return summary


def write_json(path: str | None, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({**summary, "per_image": rows}, indent=2))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    schema = recipe_schema(load_config(args.recipe)) if args.recipe else None
    unknown = [c for c in args.classes or () if c not in schema.foreground]
    if unknown:
        raise SystemExit(f"--classes: {', '.join(unknown)} not in the recipe's classes {', '.join(schema.foreground)}")
    samples = (pick_with_classes(args.data, args.splits, args.n, schema, args.classes) if args.classes
               else pick_samples(args.data, args.splits, args.n))
    baseline = (Segmenter.from_pretrained(args.baseline, device=args.device, postprocess="none")  # raw masks
                if args.baseline else None)
    missing = [c for c in args.classes or () if baseline is not None and c not in baseline.schema.foreground]
    if missing:
        raise SystemExit(f"--baseline {args.baseline} has no class {', '.join(missing)}")
    config = SingleImageConfig(steps=args.steps, max_side=args.max_side, seed=args.seed, device=args.device)
    rows = []
    for s in tqdm(samples, desc="single-image evaluation"):
        image = read_image(s.image)
        target = lesion_target(s, schema, args.classes, image.shape[:2])
        row: dict[str, Any] = {"id": s.id}
        if not args.baseline_only:
            rng = np.random.default_rng([args.seed, len(rows)])
            roi = roi_from_ground_truth(target, rng, args.roi_erode, args.roi_points)
            cpu_start = time.process_time()
            result = segment_single_image(image, roi, config, show_progress=False)
            row.update({"roi_fraction_of_lesion": float(roi.sum() / max(1, target.sum())),
                        "complement": result.complement, "dice": dice_score(result.mask, target),
                        "seconds": result.seconds, "cpu_seconds": time.process_time() - cpu_start})
        if baseline is not None:
            start, cpu_start = time.perf_counter(), time.process_time()
            mask = baseline(image).mask
            pred = class_union(mask, baseline.schema, args.classes) if args.classes else mask > 0
            row["baseline_seconds"] = time.perf_counter() - start
            row["baseline_cpu_seconds"] = time.process_time() - cpu_start
            row["baseline_dice"] = dice_score(pred, target)
        rows.append(row)
        if args.save and not args.baseline_only:
            stem = s.id.replace("/", "__")
            write_result(result, args.save, stem)
            (Path(args.save) / "rois").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(args.save) / "rois" / f"{stem}.png"), roi.astype(np.uint8) * 255)
        write_json(args.json, summary_of(rows, args), rows)  # partial results survive an interrupted run
    summary = summary_of(rows, args)
    what = f" (lesion: {' | '.join(args.classes)})" if args.classes else ""
    print(f"{len(rows)} images from {', '.join(args.splits)}{what}; ROI: hull of {args.roi_points} points of the lesion "
          f"eroded by {args.roi_erode} x its radius")
    if baseline is not None:
        print(f"baseline: {args.baseline}")
    print(f"{'method':<28}{'mean':>8}{'median':>8}{'p10':>8}{'min':>8}{'s/image':>9}{'CPU s':>8}")
    for name in ("single_image", "baseline"):
        if name in summary:
            m = summary[name]
            label = name if name == "single_image" else "baseline (--baseline)"
            print(f"{label:<28}{m['mean']:>8.4f}{m['median']:>8.4f}{m['p10']:>8.4f}{m['min']:>8.4f}"
                  f"{m['seconds_per_image']:>9.2f}{m['cpu_seconds_per_image']:>8.1f}")
    result = {**summary, "per_image": rows}
    write_json(args.json, summary, rows)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return result


if __name__ == "__main__":
    main()
