"""Load test: N concurrent gradio_client clients, each sending several real images to a local medseg server.

    python bench/load.py                       # starts the app on a free localhost port, 32 clients x 3 images
    python bench/load.py --clients 8 --requests 5 --url http://127.0.0.1:7860/

Traffic goes to localhost only; every loop is bounded (clients x requests) and the run stops by itself.
Prints successes, failures and p50/p95 latency.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_client(url: str, images: list[Path], requests: int, model: str, index: int) -> list[tuple[bool, float, str]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    out = []
    for r in range(requests):
        image = images[(index + r) % len(images)]
        start = time.perf_counter()
        try:
            result = client.predict(handle_file(str(image)), model, False, False, None, api_name="/segment")
            ok, err = isinstance(result[4], dict) and "lesion_percent" in result[4], ""
        except Exception as e:  # noqa: BLE001 - a failure is a data point here
            ok, err = False, f"{type(e).__name__}: {e}"
        out.append((ok, time.perf_counter() - start, err))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Concurrent gradio_client load on a local medseg app.")
    p.add_argument("--url", help="a running app on localhost (default: start one in this process)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=3, help="requests per client")
    p.add_argument("--model", default=None, help="model name (default: the app's default)")
    p.add_argument("--images", nargs="*", type=Path, default=sorted((ROOT / "examples").glob("*.jpg")))
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app

    model = args.model or app.default_model(app.available_models())
    demo = None
    url = args.url
    if url is None:
        demo = app.build_demo()
        demo.queue(default_concurrency_limit=2, max_size=256).launch(
            server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
        url = demo.local_url
    if not url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("bench/load.py only sends traffic to localhost")
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            futures = [pool.submit(run_client, url, args.images, args.requests, model, i) for i in range(args.clients)]
            results = [r for f in futures for r in f.result()]
    finally:
        if demo is not None:
            demo.close()
    wall = time.perf_counter() - started
    latencies = [t for ok, t, _ in results if ok]
    failures = [e for ok, _, e in results if not ok]
    summary = {
        "clients": args.clients, "requests": len(results), "successes": len(latencies), "failures": len(failures),
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": percentile(latencies, 95) if latencies else float("nan"),
        "throughput_per_s": len(latencies) / wall, "wall_s": wall,
    }
    print(f"model {model}: {args.clients} clients x {args.requests} requests against {url}")
    print(f"successes {summary['successes']}, failures {summary['failures']}, p50 {summary['p50_s']:.2f} s, "
          f"p95 {summary['p95_s']:.2f} s, {summary['throughput_per_s']:.2f} images/s, wall {wall:.1f} s")
    for e in sorted(set(failures))[:5]:
        print("  failure:", e)
    return summary


if __name__ == "__main__":
    main()
