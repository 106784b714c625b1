"""Speed of TDC-Enhance on one CPU core: each view, and all three, on a real endoscopy image.

    python bench/enhance.py [--size 512] [--repeats 50] [--image examples/polypgen_C3_EndoCV2021_00394.jpg]

Prints, per view, the median (and 10th / 90th percentile) wall time of repeated runs, plus the median CPU time of
the process (which, unlike wall time, does not count time the core spent on other programs). The target is all
three views of a 512x512 image in at most 30 ms. OpenCV runs on one thread; torch is never imported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from medseg_core import enhance  # the package imports torch lazily: this pulls in OpenCV and numpy only

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "examples" / "polypgen_C3_EndoCV2021_00394.jpg"
TARGET_MS = 30.0


def measure(fn, image: np.ndarray, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``fn(image)``, one value per run after ``warmup`` unmeasured runs."""
    for _ in range(warmup):
        fn(image)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(image)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time TDC-Enhance (texture, detail, colour) on one CPU core.")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="an endoscopy image (resized to --size)")
    p.add_argument("--size", type=int, default=512, help="square side the image is resized to (pixels)")
    p.add_argument("--repeats", type=int, default=50, help="measured runs per function")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured runs first")
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    args = p.parse_args(argv)

    cv2.setNumThreads(args.threads)
    bgr = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if bgr is None:
        p.error(f"cannot read {args.image}")
    image = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (args.size, args.size), interpolation=cv2.INTER_AREA)

    rows = []
    for name, fn in [("texture", enhance.texture), ("detail", enhance.detail), ("color", enhance.color),
                     ("all three (tdc_views)", enhance.tdc_views)]:
        wall, cpu = measure(fn, image, args.repeats, args.warmup)
        q = np.percentile(wall, [10, 90])
        rows.append((name, statistics.median(wall), q[0], q[1], statistics.median(cpu)))

    print(f"TDC-Enhance on {args.image.name} resized to {args.size}x{args.size}, {args.repeats} runs, "
          f"OpenCV {cv2.__version__} on {args.threads} thread(s)")
    print(f"{'view':24s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s} {'CPU ms':>8s}")
    for name, med, p10, p90, cpu in rows:
        print(f"{name:24s} {med:10.2f} {p10:8.2f} {p90:8.2f} {cpu:8.2f}")
    total = rows[-1][1]
    verdict = "meets" if total <= TARGET_MS else "misses"
    print(f"all three views: {total:.2f} ms median wall time, {verdict} the {TARGET_MS:.0f} ms target")
    assert "torch" not in sys.modules, "the benchmark must not load torch"
    return 0


if __name__ == "__main__":
    sys.exit(main())
