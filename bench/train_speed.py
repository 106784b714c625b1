"""Training throughput: our training loop against a plain PyTorch loop, same model, batch, input size and data.

    python bench/train_speed.py [--config train/configs/unet_lite0_polyp.yaml] [--size 256] [--batch 8] [--steps 20]

Both loops see the same cached real images (``--split``), the same augmentation pipeline, loss and optimiser; ours
is :func:`medseg_core.training.train_one_epoch` under Accelerate (channels-last, autocast as ``train.precision``
resolves here, logging), the plain one a bare ``for images, masks in loader`` with ``loss.backward()``. The first
``--warmup`` steps of each are not timed. The two loops alternate for ``--rounds`` rounds (a fresh model each time)
and each keeps its best round, so neither gains from running second. Prints images per second of each and their
ratio; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from medseg_core.config import load_config, recipe_schema
from medseg_core.data import SegDataset, read_split
from medseg_core.losses import build_loss
from medseg_core.training import Progress, auto_precision, build_model, build_optimizer, train_one_epoch
from medseg_core.transforms import train_transform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Images per second of medseg's training loop against a plain PyTorch "
                                "loop over the same model, batch, input size and data.")
    p.add_argument("--config", default="train/configs/unet_lite0_polyp.yaml", help="recipe giving model and loss")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--split", default="polyp-train", help="images to train on (the first --images of them)")
    p.add_argument("--images", type=int, default=64, help="how many images to cache")
    p.add_argument("--size", type=int, default=256, help="input size")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; each loop keeps its best")
    p.add_argument("--json", default=None, help="write the figures here")
    return p.parse_args(argv)


def _loader(ds: SegDataset, batch: int, steps: int) -> DataLoader:
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=steps * batch)
    return DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True)


def plain_loop(model, loader, loss_fn, optimizer, warmup: int) -> tuple[int, float]:
    """A bare PyTorch loop; returns images timed and their seconds."""
    model.train()
    images_done, start = 0, None
    for i, batch in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        images = batch["image"].contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(images), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if start is not None:
            images_done += images.shape[0]
    return images_done, time.perf_counter() - start


def ours(cfg, model, loader, loss_fn, optimizer, warmup: int) -> tuple[int, float]:
    """medseg_core.training.train_one_epoch under Accelerate, timed after ``warmup`` steps."""
    accelerator = Accelerator(mixed_precision=cfg["_precision"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    progress = Progress()
    train_one_epoch(accelerator, model, [next(iter(loader))] * warmup, loss_fn, optimizer, scheduler, progress, cfg,
                    None)
    start = time.perf_counter()
    train_one_epoch(accelerator, model, loader, loss_fn, optimizer, scheduler, progress, cfg, None)
    return len(loader) * cfg["train"]["batch_size"], time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["--model.input_size", str(args.size), "--train.batch_size", str(args.batch)])
    cfg["_no_progress"] = True
    cfg["_precision"] = auto_precision() if cfg["train"]["precision"] == "auto" else cfg["train"]["precision"]
    schema = recipe_schema(cfg)
    samples = read_split(args.data, args.split)[: args.images]
    results: dict[str, dict] = {}
    for name in ("plain", "ours") * args.rounds:
        torch.manual_seed(0)
        model = build_model(cfg).to(memory_format=torch.channels_last)
        ds = SegDataset(samples, train_transform(args.size, model.mean, model.std, cfg["train"]["augment"]),
                        cache_max_side=max(args.size, 256), progress=False, schema=schema)
        loss_fn = build_loss(cfg["train"]["loss"], model.num_classes, multilabel=schema.multilabel)
        optimizer = build_optimizer(model.parameters(), cfg["train"])
        if name == "plain":
            n, seconds = plain_loop(model, _loader(ds, args.batch, args.steps + args.warmup), loss_fn, optimizer,
                                    args.warmup)
        else:
            n, seconds = ours(cfg, model, _loader(ds, args.batch, args.steps), loss_fn, optimizer, args.warmup)
        best = results.get(name)
        if best is None or n / seconds > best["images_per_s"]:
            results[name] = {"images": n, "seconds": seconds, "images_per_s": n / seconds}
    ratio = results["ours"]["images_per_s"] / results["plain"]["images_per_s"]
    print(f"{cfg['model']['arch']} {args.size}px, batch {args.batch}, {args.steps} steps, {args.threads} threads, "
          f"best of {args.rounds} alternating rounds, "
          f"precision of ours: {cfg['_precision']}")
    for name, r in results.items():
        print(f"{name:<8}{r['images_per_s']:8.2f} images/s  ({r['images']} images in {r['seconds']:.1f} s)")
    print(f"ours / plain: {ratio:.2f}")
    out = {"config": args.config, "size": args.size, "batch": args.batch, "steps": args.steps, "threads": args.threads,
           "rounds": args.rounds,
           "precision_ours": cfg["_precision"], **results, "ratio": ratio}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
