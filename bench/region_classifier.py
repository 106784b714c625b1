"""Would a crop classifier per polyp help a multi-class model choose each polyp's class? (NeoPolyp, issue 12)

    python bench/region_classifier.py --model weights/unet_lite2.neopolyp --json docs/results/out.json

A 3-class NeoPolyp model gives each predicted polyp one class with ``region_class_consistency`` (the class with
the most probability mass in it, after the recorded class bias). This script measures, on a validation split:

1. where the model's split-level class Dice is lost: the pixel confusion of ground truth against the model's
   masks (recorded post-processing and class bias), split into class confusion and lesion extent;
2. how often the model's region vote picks the right class for each ground-truth polyp (a connected region of the
   ground truth's lesion pixels, labelled with its majority class);
3. the same for a classifier trained on crops of the training split's ground-truth polyps (each polyp's box grown
   by ``--margin`` of its longer side, resized to ``--size``; an ImageNet EfficientNet-Lite, class-weighted
   cross-entropy, flips, rotations, crops and colour jitter), alone and averaged with the model's vote, after each
   epoch. Accuracy is given per region and weighted by region area (closer to what split-level Dice counts).

The regions are the ground truth's (8-connected, at least ``--min-area`` pixels), for the vote as for the classifier,
so parts 2 and 3 measure classification only, not whether the model finds the polyp. Each crop is its box resized
to a square, so elongated polyps are stretched.
Nothing is selected on a test split; this reads ``--train`` and ``--val`` only.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import timm
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medseg_core.cli import write_json
from medseg_core.data import read_sample_mask, read_split
from medseg_core.inference import Segmenter
from medseg_core.io import read_image
from medseg_core.models.encoders import LITE_WEIGHTS, encoder_normalization, load_lite_state_dict
from medseg_core.postprocess import _padded_box, _regions


@dataclass
class Region:
    id: str
    label: int  # 0 = the first foreground class, 1 = the second
    area: int
    crop: np.ndarray
    vote: float | None = None  # the model's share of the second class's (biased) mass in the region


def ground_truth_regions(segmenter: Segmenter, data: str, split: str, size: int, margin: float, min_area: int,
                         with_vote: bool, progress: bool = True) -> tuple[list[Region], np.ndarray]:
    """Every ground-truth polyp of the split as a crop, and (with ``with_vote``) the model's confusion matrix
    (ground truth rows x prediction columns, pixels) over the split."""
    confusion = np.zeros((3, 3), np.int64)
    out = []
    for sample in tqdm(read_split(data, split), desc=split, unit="img", disable=not progress):
        image = read_image(sample.image)
        truth = read_sample_mask(sample, segmenter.schema, image.shape[:2])
        if truth.max() > 2:
            raise SystemExit(f"{sample.id}: this probe is for models with two foreground classes")
        decision = None
        if with_vote:
            probs, _ = segmenter.predict_probs(image)
            mask, _ = segmenter.processed_mask(image, probs, None)
            confusion += np.bincount(truth.ravel() * 3 + mask.ravel(), minlength=9).reshape(3, 3)
            decision = segmenter.decision_probs(probs)
        n, labels, stats = _regions(truth)
        for r in range(1, n):
            area = int(stats[r, cv2.CC_STAT_AREA])
            if area < min_area:
                continue
            region = labels == r
            counts = np.bincount(truth[region], minlength=3)
            w, h = int(stats[r, cv2.CC_STAT_WIDTH]), int(stats[r, cv2.CC_STAT_HEIGHT])
            box = _padded_box(stats[r], int(round(margin * max(w, h))) + 2, truth.shape)
            crop = cv2.resize(image[box], (size, size), interpolation=cv2.INTER_LINEAR)
            vote = None
            if decision is not None:
                mass = decision[1:3, region].sum(1)
                vote = float(mass[1] / max(mass.sum(), 1e-12))
            out.append(Region(sample.id, int(counts[2] > counts[1]), area, crop, vote))
    return out, confusion


def check_both_classes(split: str, regions: list[Region], min_area: int) -> None:
    """Exit with a clear message unless the split's polyps hold both lesion classes."""
    if not regions:
        raise SystemExit(f"{split}: no ground-truth polyp of at least {min_area} pixels")
    if len({r.label for r in regions}) < 2:
        raise SystemExit(f"{split}: the polyps of at least {min_area} pixels do not cover both lesion classes")


def confusion_summary(confusion: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Split-level Dice per foreground class and where each class's errors come from (pixels)."""
    out = {}
    for k in (1, 2):
        other = 3 - k
        tp = int(confusion[k, k])
        fp, fn = int(confusion[:, k].sum()) - tp, int(confusion[k].sum()) - tp
        out[names[k]] = {"dice": 2 * tp / max(2 * tp + fp + fn, 1), "missed_as_background": int(confusion[k, 0]),
                         "taken_for_other_class": int(confusion[k, other]),
                         "drawn_on_background": int(confusion[0, k]), "drawn_on_other_class": int(confusion[other, k])}
    return out


def accuracy(p: np.ndarray, regions: list[Region]) -> dict[str, float]:
    """Per-region accuracy, recall of each class, and accuracy weighted by region area, for P(second class)."""
    y = np.array([r.label for r in regions])
    area = np.array([r.area for r in regions], np.float64)
    right = (p > 0.5).astype(int) == y
    return {"accuracy": float(right.mean()), "recall_first": float(right[y == 0].mean()),
            "recall_second": float(right[y == 1].mean()), "area_weighted": float((right * area).sum() / area.sum()),
            "wrong": int((~right).sum())}


def to_tensor(crops: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (np.stack(crops).astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def predict(model: torch.nn.Module, regions: list[Region], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(second class) per region, averaged over the crop and its mirror image."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(regions), 64):
            crops = [r.crop for r in regions[i:i + 64]]
            p = model(to_tensor(crops, mean, std)).softmax(1)[:, 1]
            p_flip = model(to_tensor([c[:, ::-1] for c in crops], mean, std)).softmax(1)[:, 1]
            out.append(((p + p_flip) / 2).numpy())
    model.train()
    return np.concatenate(out)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Region vote of a 3-class model against a crop classifier per polyp, "
                                            "on a validation split (see the module docstring).")
    p.add_argument("--model", default="weights/unet_lite2.neopolyp", help="a 3-class model (folder or name)")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--train", default="neopolyp-full-train", help="split whose polyps train the classifier")
    p.add_argument("--val", default="neopolyp-full-val", help="split on which everything is measured")
    p.add_argument("--encoder", default="tf_efficientnet_lite0", choices=sorted(LITE_WEIGHTS),
                   help="ImageNet EfficientNet-Lite for the classifier")
    p.add_argument("--size", type=int, default=224, help="crop side in pixels")
    p.add_argument("--margin", type=float, default=0.25, help="context around each polyp, share of its longer side")
    p.add_argument("--min-area", type=int, default=64, help="ground-truth regions below this many pixels are skipped")
    p.add_argument("--epochs", type=_positive, default=12, help="classifier training epochs (at least 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    segmenter = Segmenter.from_pretrained(args.model, device="cpu")
    names = list(segmenter.class_names)
    if segmenter.schema.task != "multiclass" or len(names) != 3:
        raise SystemExit(f"{args.model} is not a model with background and two lesion classes")
    start = time.perf_counter()
    crop_args = (args.size, args.margin, args.min_area)
    train, _ = ground_truth_regions(segmenter, args.data, args.train, *crop_args, False, not args.no_progress)
    check_both_classes(args.train, train, args.min_area)
    val, confusion = ground_truth_regions(segmenter, args.data, args.val, *crop_args, True, not args.no_progress)
    check_both_classes(args.val, val, args.min_area)
    vote = np.array([r.vote for r in val])
    result: dict[str, Any] = {
        "model": args.model, "train": args.train, "val": args.val, "settings": {
            k: getattr(args, k) for k in ("encoder", "size", "margin", "min_area", "epochs", "batch_size", "lr",
                                          "seed", "threads")},
        "class_bias": segmenter.class_bias, "postprocess": list(segmenter.postprocess),
        "regions": {"train": len(train), "train_second": sum(r.label for r in train), "val": len(val),
                    "val_second": sum(r.label for r in val)},
        "pixels": confusion_summary(confusion, names), "confusion": confusion.tolist(),
        "vote": accuracy(vote, val), "epochs": []}
    print(f"{args.val}: split-level Dice " + ", ".join(f"{k} {v['dice']:.4f}" for k, v in result["pixels"].items()))
    for k, v in result["pixels"].items():
        print(f"  {k} pixels: missed as background {v['missed_as_background']}, taken for the other class "
              f"{v['taken_for_other_class']}, drawn on background {v['drawn_on_background']}, drawn on the other "
              f"class {v['drawn_on_other_class']}")
    print(f"regions: train {len(train)} ({result['regions']['train_second']} {names[2]}), val {len(val)} "
          f"({result['regions']['val_second']} {names[2]})")
    print(f"model's region vote: {result['vote']}")

    model = timm.create_model(args.encoder, num_classes=2, pretrained=False)
    state = {k: v for k, v in load_lite_state_dict(args.encoder, features_only=False).items()
             if not k.startswith("classifier.")}
    loaded = model.load_state_dict(state, strict=False)
    if loaded.unexpected_keys or any(not k.startswith("classifier.") for k in loaded.missing_keys):
        raise SystemExit(f"the ImageNet weights of {args.encoder} do not fit timm's model: {loaded}")
    mean, std = (np.asarray(v, np.float32) for v in encoder_normalization(args.encoder))
    augment = A.Compose([A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90(),
                         A.RandomResizedCrop(size=(args.size, args.size), scale=(0.6, 1.0), ratio=(0.8, 1.25)),
                         A.ColorJitter(0.2, 0.2, 0.1, 0.02, p=0.5)], seed=args.seed)
    labels = np.array([r.label for r in train])
    weight = torch.tensor([1.0, (labels == 0).sum() / max(1, (labels == 1).sum())], dtype=torch.float32)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(train))
        total, seen = 0.0, 0
        for i in tqdm(range(0, len(train), args.batch_size), desc=f"epoch {epoch}", unit="batch", leave=False,
                      disable=args.no_progress):
            idx = order[i:i + args.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one crop
                continue
            x = to_tensor([augment(image=train[j].crop)["image"] for j in idx], mean, std)
            loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]), weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        p = predict(model, val, mean, std)
        row = {"epoch": epoch, "loss": total / max(seen, 1), "classifier": accuracy(p, val),
               "mean_with_vote": accuracy((p + vote) / 2, val)}
        result["epochs"].append(row)
        print(f"epoch {epoch}: loss {row['loss']:.3f}; classifier {row['classifier']['accuracy']:.3f} "
              f"(area-weighted {row['classifier']['area_weighted']:.3f}); mean with the vote "
              f"{row['mean_with_vote']['accuracy']:.3f} (area-weighted {row['mean_with_vote']['area_weighted']:.3f})")
    result["per_region"] = [{"id": r.id, "label": r.label, "area": r.area, "vote": r.vote, "classifier": float(q)}
                            for r, q in zip(val, p)]
    result["minutes"] = (time.perf_counter() - start) / 60
    print(f"took {result['minutes']:.1f} min")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
