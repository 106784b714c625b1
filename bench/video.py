"""End-to-end video speed and the effect of temporal smoothing, on clips of real consecutive CVC-ClinicDB frames.

    python bench/video.py                                     # unet_lite0.polyp, backend auto
    python bench/video.py --model /tmp/unet_onnx --backend onnxruntime --json docs/results/video_bench.json

CVC-ClinicDB frames 1..612 are 29 colonoscopy sequences in order; a jump in image content marks a sequence boundary.
(1) Speed: ``--frames`` consecutive frames are written as an H.264 MP4 at 25 fps and run through ``segment_video``
(decode, network, overlay, encode), per batch size: end-to-end frames per second. (2) Smoothing: every frame of
every sequence goes through the network once; for each EMA weight the masks are rebuilt from the smoothed
probabilities: flicker as the mean IoU of consecutive masks (1 = steady) and mean Dice against the ground truth.
Most ClinicDB frames are in the training split, so the Dice here is optimistic; compare the rows, not with tests.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from medseg_core import Segmenter
from medseg_core.io import read_image, read_mask
from medseg_core.metrics import dice_score
from medseg_core.video import encode_video, segment_video


def clinicdb_sequences(root: Path, jump: float = 40.0, min_len: int = 8) -> list[list[int]]:
    """Runs of consecutive frame numbers whose images change smoothly (mean absolute difference of 64x48 grey
    thumbnails below ``jump``), at least ``min_len`` frames long."""
    thumbs = []
    for i in range(1, 613):
        grey = cv2.cvtColor(read_image(root / "images" / f"{i}.png"), cv2.COLOR_RGB2GRAY)
        thumbs.append(cv2.resize(grey, (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32))
    runs, run = [], [1]
    for i in range(2, 613):
        if float(np.abs(thumbs[i - 1] - thumbs[i - 2]).mean()) > jump:
            runs.append(run)
            run = []
        run.append(i)
    runs.append(run)
    return [r for r in runs if len(r) >= min_len]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def smoothing_table(seg: Segmenter, root: Path, sequences: list[list[int]], weights: list[float]) -> list[dict]:
    rows = {w: {"smoothing": w, "flicker_iou": [], "dice": []} for w in weights}
    for seq in tqdm(sequences, desc="sequences"):
        images = [read_image(root / "images" / f"{i}.png") for i in seq]
        truths = [read_mask(root / "masks" / f"{i}.png") for i in seq]
        small = np.concatenate([seg.network_probs([im]) for im in images])
        for w in weights:
            ema, prev = None, None
            for image, truth, p in zip(images, truths, small):
                ema = p if ema is None or w == 0 else w * ema + (1 - w) * p
                mask = seg.mask_from_probs(seg.probs_at(ema, *image.shape[:2])) > 0
                rows[w]["dice"].append(dice_score(mask, truth))
                if prev is not None:
                    rows[w]["flicker_iou"].append(iou(prev, mask))
                prev = mask
    return [{"smoothing": w, "consecutive_mask_iou": float(np.mean(r["flicker_iou"])),
             "dice": float(np.mean(r["dice"])), "frames": len(r["dice"])} for w, r in rows.items()]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Video frames per second end to end, and the smoothing table.")
    p.add_argument("--model", default="unet_lite0.polyp", help="weights folder, weights/ name or Hub repo id")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto")
    p.add_argument("--data", default="../shared/data", help="dataset root holding cvc-clinicdb/")
    p.add_argument("--frames", type=int, default=100, help="frames in the speed clip")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.data) / "cvc-clinicdb"
    seg = Segmenter.from_pretrained(args.model, device="cpu", backend=args.backend, postprocess="none")
    sequences = clinicdb_sequences(root)
    frames = [i for s in sequences for i in s][: args.frames]
    speed = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clinicdb.mp4"
        encode_video((read_image(root / "images" / f"{i}.png") for i in frames), clip, fps=25)
        for bs in args.batch_sizes:
            started = time.perf_counter()
            summary = segment_video(seg, clip, Path(tmp) / f"out{bs}.mp4", batch_size=bs)
            speed.append({"batch_size": bs, "frames": summary.frames, "size": [summary.width, summary.height],
                          "seconds": round(time.perf_counter() - started, 2),
                          "frames_per_second": round(summary.processing_fps, 2)})
    table = smoothing_table(seg, root, sequences, args.smoothing)
    result = {"model": args.model, "backend": seg.backend.name, "threads": args.threads,
              "sequences": len(sequences), "sequence_frames": sum(len(s) for s in sequences),
              "speed": speed, "smoothing": table}
    print(f"{args.model} on {seg.backend.name}, {args.threads} threads; clip of {len(frames)} CVC-ClinicDB frames "
          f"(384x288, H.264, 25 fps)")
    print(f"{'batch':>6}{'frames/s':>10}")
    for r in speed:
        print(f"{r['batch_size']:>6}{r['frames_per_second']:>10.2f}")
    print(f"\nsmoothing over {len(sequences)} sequences ({result['sequence_frames']} frames)")
    print(f"{'EMA weight':>10}{'consecutive IoU':>17}{'Dice':>8}")
    for r in table:
        print(f"{r['smoothing']:>10.2f}{r['consecutive_mask_iou']:>17.4f}{r['dice']:>8.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
