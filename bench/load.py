"""Load test: N concurrent gradio_client clients on mixed endpoints (segment, batch, single image) of a local app.

    python bench/load.py                       # starts the app on a free localhost port, 32 clients x 3 requests
    python bench/load.py --clients 8 --requests 5 --url http://127.0.0.1:7860/

The in-process server gets the app's own queue settings (``medseg_core.webapp.configure_queue``: one worker pool of
the cores shared by the heavy events, the app's queue size, the per-client limit). Client ``i`` calls ``/segment``
(i % 4 in 0, 1), ``/batch`` with two images (i % 4 == 2) or ``/single_image`` with a few training steps (i % 4 == 3).
Traffic goes to localhost only; every loop is bounded (clients x requests) and the run stops by itself. Prints
successes, failures, p50/p95 latency per endpoint and the server's memory; exits 1 when any request failed, 2 for
bad arguments. All clients come from one address (localhost), so the in-process server lifts the per-address limit
(``MEDSEG_MAX_PENDING_PER_ADDRESS=0``, unless set); an app given with ``--url`` needs the same.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ("segment", "segment", "batch", "single_image")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _roi_layer(image: Path, folder: Path) -> Path:
    """A transparent layer the size of ``image`` with an opaque disc in its middle: the painted ROI."""
    import cv2
    import PIL.Image

    with PIL.Image.open(image) as im:
        w, h = im.size
    layer = np.zeros((h, w, 4), np.uint8)
    cv2.circle(layer, (w // 2, h // 2), min(w, h) // 6, (255, 255, 255, 255), -1)
    path = folder / f"{image.stem}_layer.png"
    PIL.Image.fromarray(layer).save(path)
    return path


def _request(client, endpoint: str, images: list[Path], layers: dict[Path, Path], model: str, k: int,
             steps: int) -> bool:
    from gradio_client import handle_file

    image = images[k % len(images)]
    if endpoint == "segment":
        result = client.predict(handle_file(str(image)), model, False, False, None, False, api_name="/segment")
        return isinstance(result[4], dict) and "lesion_percent" in result[4]
    if endpoint == "batch":
        files = [handle_file(str(p)) for p in (image, images[(k + 1) % len(images)])]
        result = client.predict(files, model, False, False, api_name="/batch")
        return str(result[3]).startswith("2 of 2")
    editor = {"background": handle_file(str(image)), "layers": [handle_file(str(layers[image]))], "composite": None}
    result = client.predict(editor, None, steps, api_name="/single_image")
    return "Lesion area" in str(result[1])


def run_client(url: str, images: list[Path], layers: dict[Path, Path], requests: int, model: str, index: int,
               steps: int) -> list[tuple[str, bool, float, str]]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    endpoint = ENDPOINTS[index % len(ENDPOINTS)]
    out = []
    for r in range(requests):
        start = time.perf_counter()
        try:
            ok, err = _request(client, endpoint, images, layers, model, index + r, steps), ""
            if not ok:
                err = "unexpected answer"
        except Exception as e:  # noqa: BLE001 - a failure is a data point here
            ok, err = False, f"{type(e).__name__}: {e}"
        out.append((endpoint, ok, time.perf_counter() - start, err))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (the in-process server's), from /proc."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Concurrent gradio_client load on a local medseg app (mixed endpoints).")
    p.add_argument("--url", help="a running app on localhost (default: start one in this process)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=3, help="requests per client")
    p.add_argument("--model", default=None, help="model name (default: the app's default)")
    p.add_argument("--steps", type=int, default=50, help="training steps of each single-image request")
    p.add_argument("--images", nargs="*", type=Path, default=sorted((ROOT / "examples").glob("*.jpg")))
    p.add_argument("--json", default=None, help="write the summary to this JSON file")
    args = p.parse_args(argv)
    for name in ("clients", "requests", "steps"):
        if getattr(args, name) < 1:
            print(f"load.py: error: --{name} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            raise SystemExit(2)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MEDSEG_MAX_PENDING_PER_ADDRESS", "0")  # every client here shares 127.0.0.1
    from medseg_core import webapp

    model = args.model or webapp.default_model(webapp.available_models())
    demo = None
    url = args.url
    if url is None:
        demo = webapp.configure_queue(webapp.build_demo())
        demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                    **webapp.launch_options())
        url = demo.local_url
    if not url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("bench/load.py only sends traffic to localhost")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medseg-load-") as tmp:
        layers = {image: _roi_layer(image, Path(tmp)) for image in args.images}
        try:
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                futures = [pool.submit(run_client, url, args.images, layers, args.requests, model, i, args.steps)
                           for i in range(args.clients)]
                results = [r for f in futures for r in f.result()]
        finally:
            memory = _memory_mb()
            if demo is not None:
                demo.close()
    wall = time.perf_counter() - started
    latencies = [t for _, ok, t, _ in results if ok]
    failures = [f"{e} ({endpoint})" for endpoint, ok, _, e in results if not ok]
    summary = {
        "clients": args.clients, "requests": len(results), "successes": len(latencies), "failures": len(failures),
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": percentile(latencies, 95) if latencies else float("nan"),
        "throughput_per_s": len(latencies) / wall, "wall_s": wall, "workers": webapp.WORKERS,
        "queue_size": webapp.QUEUE_SIZE, **memory,
    }
    print(f"model {model}: {args.clients} clients x {args.requests} requests against {url} "
          f"({webapp.WORKERS} shared workers, queue {webapp.QUEUE_SIZE}, {webapp.MAX_PENDING_PER_CLIENT} per client)")
    for endpoint in sorted(set(ENDPOINTS)):
        times = [t for e, ok, t, _ in results if e == endpoint and ok]
        n = sum(e == endpoint for e, *_ in results)
        if n:
            print(f"  /{endpoint}: {len(times)} of {n} ok, p50 {statistics.median(times) if times else float('nan'):.2f}"
                  f" s, p95 {percentile(times, 95) if times else float('nan'):.2f} s")
    print(f"successes {summary['successes']}, failures {summary['failures']}, p50 {summary['p50_s']:.2f} s, "
          f"p95 {summary['p95_s']:.2f} s, {summary['throughput_per_s']:.2f} requests/s, wall {wall:.1f} s")
    if memory and demo is not None:
        print(f"server memory (this process): {memory.get('rss_mb', 0):.0f} MB resident after the run, "
              f"peak {memory.get('peak_rss_mb', 0):.0f} MB")
    for e in sorted(set(failures))[:5]:
        print("  failure:", e)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**summary, "model": model, "per_endpoint": {
            e: sorted(t for x, ok, t, _ in results if x == e and ok) for e in sorted(set(ENDPOINTS))}}, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
