"""Export a model to ONNX (``model.onnx`` beside its ``config.json``), check it against eager PyTorch on real
images, and optionally quantise it to int8 (``model.int8.onnx``) with static calibration on training images.

    python -m medseg_core.export --model unet_lite2.polyp --out /tmp/unet_onnx --check-split test-kvasir
    python -m medseg_core.export --model /tmp/unet_onnx --int8 --calib-split polyp-train --check-split test-kvasir

A weights folder that holds ``model.onnx`` is run by onnxruntime when ``Segmenter.from_pretrained(...,
backend="auto")`` finds the package installed; the same pre- and post-processing apply either way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import ONNX_FILENAME, onnxruntime_version
from .checkpoint import check_finite
from .cli import setup_logging
from .commands import export as export_command
from .commands import parse_export_args
from .data import read_split
from .hub import load_model, resolve
from .inference import Segmenter
from .io import read_image, read_mask
from .metrics import dice_score
from .models import SegModel

__all__ = ["INT8_FILENAME", "check_onnx", "export_onnx", "main", "quantize_int8", "run"]

log = logging.getLogger(__name__)

#: The int8 (static, QDQ) network inside a weights folder.
INT8_FILENAME = "model.int8.onnx"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _load(model_or_weights: SegModel | str | os.PathLike) -> tuple[SegModel, Path | None]:
    if isinstance(model_or_weights, SegModel):
        return model_or_weights, None
    weights = resolve(model_or_weights)  # config.json read once
    return weights.load_model(), weights.folder


def export_onnx(model_or_weights_folder: SegModel | str | os.PathLike, out_dir: str | os.PathLike | None = None,
                opset: int = 18) -> Path:
    """Write ``model.onnx`` for a model: input ``(batch, C, size, size)`` float32 (normalised), output logits.

    Args:
        model_or_weights_folder: a :class:`SegModel`, or a weights folder / ``weights/`` name / Hub repo id.
        out_dir: where to write; by default the weights folder itself (next to its ``config.json``). When it has
            no ``config.json`` yet, the model's config, weights and card are saved there too, so the folder is a
            complete weights folder that ``Segmenter.from_pretrained`` can load.
        opset: ONNX opset (18 by default).

    Returns:
        The path of ``model.onnx``. The batch axis is dynamic; height and width are the model's ``input_size``,
        which is all ``Segmenter`` feeds it.
    """
    import onnx

    model, folder = _load(model_or_weights_folder)
    check_finite(model, f"the model {folder.name if folder is not None else ''}".rstrip())  # never shipped broken
    if out_dir is None and folder is None:
        raise ValueError("give out_dir when exporting a model object (there is no weights folder to write into)")
    out = Path(out_dir) if out_dir is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.json").is_file():
        if folder is not None:  # a copy of the whole weights folder (config, card, helper models such as refiner/)
            shutil.copytree(folder, out, dirs_exist_ok=True)
        else:
            model.save_pretrained(out)
    model = model.cpu().eval()
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size)
    path = out / ONNX_FILENAME
    # Written to a temporary name first, so a failed export never leaves a half-written model.onnx behind.
    tmp = path.with_suffix(".onnx.tmp")
    batch_axis = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with torch.inference_mode(), warnings.catch_warnings():
        # Shape checks such as "resize the logits if they are not at input size" are fixed at trace time; the
        # input size is fixed too, so the tracer's warnings about them say nothing here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), str(tmp), opset_version=opset, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=batch_axis, do_constant_folding=True)
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    log.info("exported %s (%.1f MB, opset %d)", path, path.stat().st_size / 1e6, opset)
    return path


class _CalibrationImages:
    """onnxruntime's ``CalibrationDataReader``: the network inputs of the given images, preprocessed as
    ``Segmenter`` does."""

    def __init__(self, segmenter: Segmenter, paths: Sequence[Path]) -> None:
        self._inputs: Iterator[dict[str, np.ndarray]] = (
            {INPUT_NAME: np.ascontiguousarray(segmenter._preprocess(read_image(p)))} for p in paths
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._inputs, None)


def quantize_int8(weights_folder: str | os.PathLike, data_root: str | os.PathLike, calib_split: str = "polyp-train",
                  calib_n: int = 32) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations, min-max calibration) of a
    folder's ``model.onnx``, calibrated on ``calib_n`` images spread evenly over a training split.

    Returns:
        The path of ``model.int8.onnx`` in the same folder. Whether it is good enough is for :func:`check_onnx`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = Path(weights_folder)
    fp32 = folder / ONNX_FILENAME
    if not fp32.is_file():
        raise FileNotFoundError(f"no {ONNX_FILENAME} in {folder}; export it first")
    samples = read_split(data_root, calib_split)
    step = max(1, len(samples) // calib_n)
    paths = [s.image for s in samples[::step][:calib_n]]
    segmenter = Segmenter(load_model(folder), device="cpu")
    out = folder / INT8_FILENAME
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _CalibrationImages(segmenter, paths), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    log.info("int8 model %s (%.1f MB) calibrated on %d images of %s", out, out.stat().st_size / 1e6, len(paths),
             calib_split)
    return out


def check_onnx(weights_folder: str | os.PathLike, data_root: str | os.PathLike, split: str,
               onnx_path: str | os.PathLike | None = None, limit: int | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Eager fp32 against ONNX Runtime on the real images of a split, through the same ``Segmenter`` path
    (no post-processing).

    Returns:
        ``max_abs_prob_diff`` (largest difference of the lesion probability over all pixels and images),
        ``mean_abs_prob_diff``, ``mask_agreement_dice`` (mean and min over images of the Dice between the two
        masks), and both backends' mean Dice against the ground truth with their difference ``dice_loss``
        (eager minus onnx).
    """
    weights = resolve(weights_folder)
    folder = weights.folder
    onnx_path = Path(onnx_path) if onnx_path is not None else folder / ONNX_FILENAME
    model = weights.load_model()
    eager = Segmenter(model, device="cpu", backend="torch", postprocess="none")
    ort = Segmenter(model, device="cpu", backend="onnxruntime", onnx_path=onnx_path, postprocess="none")
    samples = read_split(data_root, split)[:limit]
    max_diff, sum_diff, pixels, agree, dice_eager, dice_ort = 0.0, 0.0, 0, [], [], []
    for s in tqdm(samples, desc=f"check {onnx_path.name} on {split}", disable=not progress):
        image, truth = read_image(s.image), read_mask(s.mask)
        a, b = eager(image), ort(image)
        diff = np.abs(a.probs[1] - b.probs[1])
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum(dtype=np.float64))
        pixels += diff.size
        agree.append(dice_score(b.mask, a.mask))
        dice_eager.append(dice_score(a.mask, truth))
        dice_ort.append(dice_score(b.mask, truth))
    return {
        "weights": str(folder),
        "onnx": onnx_path.name,
        "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2),
        "split": split,
        "n": len(samples),
        "max_abs_prob_diff": max_diff,
        "mean_abs_prob_diff": sum_diff / max(1, pixels),
        "mask_agreement_dice": float(np.mean(agree)) if agree else float("nan"),
        "mask_agreement_dice_min": float(np.min(agree)) if agree else float("nan"),
        "dice_eager": float(np.mean(dice_eager)) if dice_eager else float("nan"),
        "dice_onnx": float(np.mean(dice_ort)) if dice_ort else float("nan"),
        "dice_loss": float(np.mean(dice_eager) - np.mean(dice_ort)) if dice_ort else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``medseg-export``: 0 on success; 1 when the int8 model misses its Dice budget (removed unless --keep-int8)."""
    return run(parse_export_args(argv))


def run(args: argparse.Namespace) -> int:
    """:func:`main` on parsed arguments (``medseg-export`` calls this)."""
    setup_logging()
    for split in [*args.check_split, *([args.calib_split] if args.int8 else [])]:
        read_split(args.data, split)  # an unknown split is a usage error, said before the export
    started = time.time()
    path = export_onnx(args.model, args.out, opset=args.opset)
    folder = path.parent
    report: dict[str, Any] = {"model": str(args.model), "onnx": str(path), "opset": args.opset,
                              "onnx_mb": round(path.stat().st_size / 1e6, 2), "onnxruntime": onnxruntime_version(),
                              "checks": []}
    files = [path]
    if args.int8:
        files.append(quantize_int8(folder, args.data, args.calib_split, args.calib_n))
        report.update(int8=str(files[-1]), int8_mb=round(files[-1].stat().st_size / 1e6, 2),
                      calib_split=args.calib_split, calib_n=args.calib_n)
    status = 0
    for onnx_file in files:
        checks = [check_onnx(folder, args.data, split, onnx_path=onnx_file, limit=args.limit)
                  for split in args.check_split]
        report["checks"].extend(checks)
        for c in checks:
            log.info("%s on %s (n=%d): max |dp| %.2e, mask agreement Dice %.4f (min %.4f), Dice eager %.4f, "
                     "onnx %.4f, loss %+.4f", c["onnx"], c["split"], c["n"], c["max_abs_prob_diff"],
                     c["mask_agreement_dice"], c["mask_agreement_dice_min"], c["dice_eager"], c["dice_onnx"],
                     c["dice_loss"])
        if onnx_file.name == INT8_FILENAME and checks:
            worst = max(c["dice_loss"] for c in checks)
            report["int8_kept"] = worst <= args.max_dice_loss
            if not report["int8_kept"]:
                log.warning("int8 loses %.4f Dice (budget %.4f)%s", worst, args.max_dice_loss,
                            "" if args.keep_int8 else f": removing {onnx_file}")
                if not args.keep_int8:
                    onnx_file.unlink()
                status = 1
    report["seconds"] = round(time.time() - started, 1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(export_command())
