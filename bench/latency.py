"""CPU inference time per image (batch 1) of every engine, in one run.

    python bench/latency.py                                   # the shipped default at 352 px, all engines
    python bench/latency.py --onnx-dir /tmp/unet_onnx --peer  # a folder with model.onnx / model.int8.onnx; smp peer
    python bench/latency.py --onnx-dir /tmp/unet_onnx --openvino  # also OpenVINO on model.onnx (forward only)
    python bench/latency.py --json docs/results/latency_unet_lite0.polyp.json

Rows: eager fp32, eager bf16 (autocast), ONNX Runtime fp32 and int8 (when the files exist; export them with
``python -m medseg_core.export``), OpenVINO fp32 on the same graph
(``--openvino``, forward only) and the smp U-Net peer (``--peer``, forward only). Columns: the median time of
(a) the network's forward pass on one normalised input at the model's size, and (b) the whole ``Segmenter`` path on
a ``--image-size`` RGB image (resize, normalise, network, probabilities back to the image size, mask, overlay,
statistics; no post-processing) — what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medseg_core import Segmenter, load_model, resolve_weights
from medseg_core.backends import onnxruntime_available, onnxruntime_version
from medseg_core.data import read_split
from medseg_core.io import read_image


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def test_image(size: int, data: str) -> np.ndarray:
    """A real polyp image resized to size x size (random pixels when the data set is not there)."""
    import cv2

    try:
        return cv2.resize(read_image(read_split(data, "test-kvasir")[0].image), (size, size),
                          interpolation=cv2.INTER_AREA)
    except FileNotFoundError:
        return np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)


def openvino_rows(path: Path, x: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """OpenVINO's CPU plugin on the exported graph (fp32, latency hint, ``--threads``): forward only, with the largest
    difference from ONNX Runtime's output; [] when OpenVINO or the graph is missing."""
    try:
        import openvino
    except ImportError:
        print("skipping openvino: not installed (pip install openvino)")
        return []
    if not path.is_file():
        print(f"skipping openvino: no {path} (export it with python -m medseg_core.export)")
        return []
    compiled = openvino.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    row = {"engine": f"openvino-fp32 ({openvino.__version__.split('-')[0]})",
           "forward_ms": round(median_ms(lambda: request.infer({0: x}), args.repeats), 2), "segmenter_ms": None,
           "model_input": x.shape[-1], "image_size": None}
    if onnxruntime_available():
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reference = session.run(None, {session.get_inputs()[0].name: x})[0]
        row["max_abs_diff_vs_onnxruntime"] = float(np.abs(request.infer({0: x})[0] - reference).max())
    return [row]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="Median CPU inference time per image (batch 1), every engine.")
    p.add_argument("--model", default="unet_lite0.polyp", help="weights folder, weights/ name or Hub repo id")
    p.add_argument("--onnx-dir", help="folder holding model.onnx / model.int8.onnx (default: the weights folder)")
    p.add_argument("--image-size", type=int, default=352, help="side of the square test image for the whole path")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--engines", nargs="+", default=["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"],
                   choices=["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"])
    p.add_argument("--openvino", action="store_true",
                   help="also time OpenVINO on the exported model.onnx (forward only; needs pip install openvino)")
    p.add_argument("--peer", action="store_true",
                   help="also time segmentation_models_pytorch's U-Net on tu-tf_efficientnet_lite0 (the issue's peer)")
    p.add_argument("--data", default="../shared/data", help="dataset root (a real test image)")
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = resolve_weights(args.model)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else folder
    model = load_model(folder)
    image = test_image(args.image_size, args.data)
    x = np.ascontiguousarray(np.random.default_rng(0).standard_normal(
        (1, model.in_channels, model.input_size, model.input_size), dtype=np.float32))
    rows = []
    for engine in args.engines:
        backend, precision = engine.split("-")
        kwargs: dict = {"precision": "bf16" if precision == "bf16" else "fp32", "backend": "torch"}
        if backend == "onnx":
            path = onnx_dir / ("model.int8.onnx" if precision == "int8" else "model.onnx")
            if not path.is_file() or not onnxruntime_available():
                print(f"skipping {engine}: no {path} (export it with python -m medseg_core.export)")
                continue
            kwargs.update(backend="onnxruntime", onnx_path=path)
        seg = Segmenter(load_model(folder), device="cpu", postprocess="none", **kwargs)
        forward = median_ms(lambda: seg.backend(x), args.repeats)
        full = median_ms(lambda: seg(image), args.repeats)
        rows.append({"engine": engine, "forward_ms": round(forward, 2), "segmenter_ms": round(full, 2),
                     "model_input": model.input_size, "image_size": args.image_size})
    if args.openvino:
        rows += openvino_rows(onnx_dir / "model.onnx", x, args)
    smp = None
    if args.peer:
        try:
            import segmentation_models_pytorch as smp
        except ImportError:
            print("skipping the smp peer: segmentation-models-pytorch is not installed")
    if smp is not None:
        peer = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=1).eval()
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            rows.append({"engine": "smp Unet tu-tf_efficientnet_lite0 (peer, eager fp32)",
                         "forward_ms": round(median_ms(lambda: peer(xt), args.repeats), 2), "segmenter_ms": None,
                         "model_input": model.input_size, "image_size": None})
    cpu = platform.processor() or platform.machine()
    print(f"{args.model}: torch {torch.__version__}, onnxruntime {onnxruntime_version()}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs ({cpu}), median of {args.repeats} runs, batch 1, network input "
          f"{model.input_size} px, whole path on a {args.image_size} px image")
    print(f"{'engine':<56}{'forward ms':>12}{'segmenter ms':>14}")
    for r in rows:
        seg_ms = f"{r['segmenter_ms']:.1f}" if r["segmenter_ms"] is not None else "—"
        print(f"{r['engine']:<56}{r['forward_ms']:>12.1f}{seg_ms:>14}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "threads": args.threads, "repeats": args.repeats,
                                               "torch": torch.__version__, "onnxruntime": onnxruntime_version(),
                                               "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
