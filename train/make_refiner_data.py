"""Build the refiner's training crops from a base model's predictions on a split.

    python train/make_refiner_data.py --model runs/unet_lite0.polyp/model --split polyp-train \\
        --out runs/refiner_data --out-split refiner-train
    python train/make_refiner_data.py --model runs/unet_lite0.polyp/model --split polyp-val \\
        --out runs/refiner_data --out-split refiner-val
    python train/train.py --config train/configs/refiner_polyp.yaml

For every lesion region the base model predicts (the regions the ``refine`` step will see), a few crops around
the region's bounding box (margin drawn around the ``refine`` step's default) are cut from the image, the base
model's lesion probability and the ground truth, resized to ``--size`` and written in the project's layout:

    <out>/<name>/images/<id>.png   RGB crop
    <out>/<name>/masks/<id>.png    ground truth, 0 / 255 (lesion, any class)
    <out>/<name>/probs/<id>.png    the base model's lesion probability, 0..255
    <out>/splits/<out-split>.txt   one ``<name>/<id>`` per line

``medseg_core.data.read_split`` reads ``probs/`` as the fourth input channel of the refiner.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from medseg_core.data import read_split
from medseg_core.inference import Segmenter
from medseg_core.io import read_image, read_mask, write_png

log = logging.getLogger("medseg.make_refiner_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cut refiner training crops (image, coarse probability, target) around "
                                "the lesion regions a base model predicts on a split.")
    p.add_argument("--model", required=True, help="base model: weights folder, a name under weights/, or a Hub id")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--split", required=True, help="split name (e.g. polyp-train) or path to a split .txt file")
    p.add_argument("--out", required=True, help="output root (gets <name>/{images,masks,probs} and splits/)")
    p.add_argument("--name", default="refiner-crops", help="dataset folder name under --out")
    p.add_argument("--out-split", default=None, help="split file name written under <out>/splits "
                   "(default: refiner-<split name>)")
    p.add_argument("--size", type=int, default=128, help="crop side in pixels (the refiner's input_size)")
    p.add_argument("--crops-per-region", type=int, default=2, help="crops per predicted region, margins jittered")
    p.add_argument("--margin", type=float, nargs=2, default=(0.1, 0.45), metavar=("MIN", "MAX"),
                   help="context margin range, as a fraction of the region box's longer side")
    p.add_argument("--mask-encoding", choices=["binary", "indexed"], default="binary",
                   help="how the split's masks store the lesion (crops are binary: any class is lesion)")
    p.add_argument("--tta", action="store_true", help="flip TTA for the base model")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p.parse_args(argv)


def region_crops(image: np.ndarray, lesion_prob: np.ndarray, target: np.ndarray, size: int, margins: list[float]
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Crops (image, prob, target) around every predicted region (``lesion_prob > 0.5``), one per margin.

    ``image`` is ``uint8`` RGB (H, W, 3); ``lesion_prob`` float (H, W) in [0, 1]; ``target`` the class mask. Outputs
    are ``uint8``: RGB (size, size, 3), probability x 255 (size, size) and the target as 0 / 255 (size, size).
    """
    n, _, stats, _ = cv2.connectedComponentsWithStats((lesion_prob > 0.5).astype(np.uint8), connectivity=8)
    h, w = target.shape
    out = []
    for r in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[r, :4])
        for m in margins:
            pad = int(round(m * max(bw, bh))) + 2  # the same box rule as postprocess.refine
            ys, xs = slice(max(0, y - pad), min(h, y + bh + pad)), slice(max(0, x - pad), min(w, x + bw + pad))
            out.append((
                cv2.resize(image[ys, xs], (size, size), interpolation=cv2.INTER_AREA),
                np.round(cv2.resize(lesion_prob[ys, xs], (size, size), interpolation=cv2.INTER_LINEAR) * 255
                         ).astype(np.uint8),
                cv2.resize(((target[ys, xs] > 0) * 255).astype(np.uint8), (size, size),
                           interpolation=cv2.INTER_NEAREST),
            ))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, postprocess="none")  # raw probabilities
    samples = read_split(args.data, args.split)[: args.limit]
    out_root = Path(args.out)
    folders = {k: out_root / args.name / k for k in ("images", "masks", "probs")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    ids: list[str] = []
    no_region = 0
    for s in tqdm(samples, desc="refiner crops"):
        image = read_image(s.image)
        target = read_mask(s.mask, args.mask_encoding)
        probs, _ = segmenter.predict_probs(image, tta=args.tta)
        margins = rng.uniform(*args.margin, size=args.crops_per_region).tolist()
        crops = region_crops(image, 1.0 - probs[0], target, args.size, margins)
        no_region += not crops
        stem = s.id.replace("/", "__")
        for k, (img, prob, tgt) in enumerate(crops):
            crop_id = f"{stem}_c{k}"
            write_png(folders["images"] / f"{crop_id}.png", img)
            write_png(folders["masks"] / f"{crop_id}.png", tgt)
            write_png(folders["probs"] / f"{crop_id}.png", prob)
            ids.append(f"{args.name}/{crop_id}")
    split_name = args.out_split or f"refiner-{Path(args.split).stem}"
    (out_root / "splits").mkdir(parents=True, exist_ok=True)
    split_file = out_root / "splits" / f"{split_name}.txt"
    split_file.write_text("".join(f"{i}\n" for i in ids))
    log.info("%d crops from %d images (%d with no predicted region) -> %s", len(ids), len(samples), no_region,
             split_file)
    return {"crops": len(ids), "images": len(samples), "no_region": no_region, "split_file": str(split_file)}


if __name__ == "__main__":
    main()
