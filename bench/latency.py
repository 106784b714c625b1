"""CPU inference time of a segmentation model, per image, batch 1.

    python bench/latency.py                                  # the shipped default, 256 and 352 px
    python bench/latency.py --model runs/x/model --sizes 352 --threads 2
    python bench/latency.py --peer                           # also the smp U-Net peer (needs segmentation-models-pytorch)

Prints the median over repeated runs of (a) the model's forward pass on a size x size input and (b) the whole
``Segmenter`` path on a size x size image (resize, normalise, forward, probabilities back to the image size, mask,
overlay, statistics) — what a user waits for.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_core import Segmenter, load_model  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="Median CPU inference time per image (batch 1).")
    p.add_argument("--model", default="unet_lite0.polyp", help="weights folder, weights/ name or Hub repo id")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 352], help="square input sizes to time")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="Segmenter precision")
    p.add_argument("--peer", action="store_true",
                   help="also time segmentation_models_pytorch's U-Net on tu-tf_efficientnet_lite0 (the issue's peer)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = []
    rng = np.random.default_rng(0)
    for size in args.sizes:
        # The Segmenter runs the model at its configured input size, channels-last; time it on an image of this size.
        seg = Segmenter(model, device="cpu", precision=args.precision)
        x = torch.randn(1, model.in_channels, size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16"):
            forward = median_ms(lambda: seg.model(x), args.repeats)
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        full = median_ms(lambda: seg(image), args.repeats)
        rows.append({"model": f"{args.model} ({args.precision})", "size": size, "forward_ms": forward, "segmenter_ms": full,
                     "model_input": model.input_size})
        if args.peer:
            import segmentation_models_pytorch as smp

            peer = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=1).eval()
            with torch.inference_mode():
                rows.append({"model": "smp Unet tu-tf_efficientnet_lite0 (peer)", "size": size,
                             "forward_ms": median_ms(lambda: peer(x.contiguous()), args.repeats), "segmenter_ms": float("nan"),
                             "model_input": size})
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} runs, batch 1")
    print(f"{'model':<44}{'size':>6}{'forward ms':>12}{'segmenter ms':>14}")
    for r in rows:
        seg_ms = f"{r['segmenter_ms']:.1f}" if r["segmenter_ms"] == r["segmenter_ms"] else "—"
        print(f"{r['model']:<44}{r['size']:>6}{r['forward_ms']:>12.1f}{seg_ms:>14}")
    return rows


if __name__ == "__main__":
    main()
