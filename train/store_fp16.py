"""Copy a weights folder with its floating-point tensors stored in fp16 (half the size on disk).

    python train/store_fp16.py runs/unet_lite2.polyp_gpu/model weights/unet_lite2.polyp

The model still runs in fp32: loading casts each tensor back. Ship the copy only where ``train/evaluate.py`` on it
measures what the original measured (the model card says so).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medseg_core.checkpoint import NonFiniteModelError, check_finite


def store_fp16(src: Path, dst: Path) -> tuple[int, int]:
    """Write ``dst`` (config, card and any sub-folders copied; ``model.safetensors`` in fp16); returns the sizes
    in bytes of the original and the copy. Weights holding a NaN or an infinity, in fp32 or once cast to fp16, are
    refused (``SystemExit``) and nothing is written."""
    if not (src / "model.safetensors").is_file():
        raise SystemExit(f"store_fp16: no model.safetensors in {src}")
    if dst.resolve() == src.resolve():
        raise SystemExit("store_fp16: write to another folder")
    state = load_file(src / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    try:
        check_finite(state, str(src))
        check_finite(half, f"the fp16 copy of {src} (fp16 stops at 65504)")
    except NonFiniteModelError as err:
        raise SystemExit(f"store_fp16: {err}; nothing written") from err
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(half, dst / "model.safetensors", metadata={"format": "pt"})
    return (src / "model.safetensors").stat().st_size, (dst / "model.safetensors").stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="weights folder (model.safetensors + config.json)")
    parser.add_argument("dst", type=Path, help="folder to write")
    args = parser.parse_args(argv)
    before, after = store_fp16(args.src, args.dst)
    print(f"{args.dst}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB (fp16)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
