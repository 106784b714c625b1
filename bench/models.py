"""Size and speed of every registered model: parameters, GFLOPs, CPU latency and peak memory at 352x352, batch 1.

    python bench/models.py                    # every model in the registry, each in its own process
    python bench/models.py --models unet pranet --size 256 --threads 2

Each model is measured in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own. Models are
built with their paper-default settings and random weights (no download); FLOPs are counted by PyTorch's
``FlopCounterMode`` (a multiply-add counts as two FLOPs) for one forward pass in eval mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def measure(name: str, size: int, threads: int, repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medseg_core import create_model

    torch.set_num_threads(threads)
    model = create_model(name, encoder_weights="random") if _takes_encoder(name) else create_model(name)
    model.eval()
    x = torch.randn(1, model.in_channels, size, size)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1000)
    return {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "latency_ms": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _takes_encoder(name: str) -> bool:
    import inspect

    from medseg_core.models import get_model_class

    return "encoder_weights" in inspect.signature(get_model_class(name).__init__).parameters


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="Parameters, GFLOPs, CPU latency and peak memory of registered models.")
    p.add_argument("--models", nargs="*", help="registry names (default: all)")
    p.add_argument("--size", type=int, default=352)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model and print JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.threads, args.repeats)))
        return []
    from medseg_core import list_models

    names = args.models or list_models()
    rows = []
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name, "--size", str(args.size), "--threads", str(args.threads),
             "--repeats", str(args.repeats)], capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"model": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{args.size}x{args.size}, batch 1, {args.threads} CPU threads, median of {args.repeats} runs, random weights")
    print(f"{'model':<18}{'params (M)':>12}{'GFLOPs':>10}{'latency ms':>12}{'peak RSS MB':>13}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<18}  error: {r['error']}")
        else:
            print(f"{r['model']:<18}{r['params_m']:>12.2f}{r['gflops']:>10.2f}{r['latency_ms']:>12.1f}"
                  f"{r['peak_rss_mb']:>13.0f}")
    return rows


if __name__ == "__main__":
    main()
