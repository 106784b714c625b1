"""Train a medseg model from a YAML recipe, on a laptop CPU or several GPUs.

    accelerate launch train/train.py --config train/configs/unet_lite0_polyp.yaml [--train.epochs 2 ...]
    python train/train.py --config ... (one process)

Hyperparameters live in the YAML (override any with ``--section.key value``); infrastructure in flags. The best
model by validation Dice is written to ``<output-dir>/model`` (``from_pretrained`` loads it); ``save_state``
checkpoints go to ``<output-dir>/checkpoints`` and ``--resume`` continues from one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_core.data import SegDataset, read_split  # noqa: E402
from medseg_core.hub import push_model, write_model_card  # noqa: E402
from medseg_core.losses import build_loss  # noqa: E402
from medseg_core.models import SegModel, create_model  # noqa: E402
from medseg_core.transforms import eval_transform, train_transform  # noqa: E402

log = logging.getLogger("medseg.train")

DEFAULTS: dict[str, Any] = {
    "name": "model",
    "model": {"arch": "unet", "num_classes": 1},
    "data": {
        "root": "../shared/data",
        "train_split": "polyp-train",
        "val_split": "polyp-val",
        "mask_encoding": "binary",
        "cache_max_side": None,
    },
    "train": {
        "epochs": 10,
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.5,
        "loss": "dice_ce",
        "augment": 1.0,
        "num_workers": 0,
        "precision": "auto",
        "channels_last": True,
        "max_train_samples": None,
        "max_val_samples": None,
    },
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description="Train a medseg model from a YAML recipe. Any recipe value can be overridden with "
        "--section.key value (e.g. --train.epochs 2 --model.encoder tf_efficientnet_lite2).",
    )
    p.add_argument("--config", required=True, help="YAML recipe, e.g. train/configs/unet_lite0_polyp.yaml")
    p.add_argument("--output-dir", default=None, help="where the run writes (default runs/<recipe name>)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder written by an earlier run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (smoke tests)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the best model to this Hub repo")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p.parse_known_args(argv)


def load_config(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The recipe: DEFAULTS, updated by the YAML, updated by ``--section.key value`` overrides."""
    cfg = json.loads(json.dumps(DEFAULTS))
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    if len(overrides) % 2:
        raise SystemExit(f"overrides come in pairs --section.key value; got {overrides}")
    for flag, raw in zip(overrides[::2], overrides[1::2]):
        if not flag.startswith("--"):
            raise SystemExit(f"unexpected argument {flag!r}")
        *sections, leaf = flag[2:].replace("-", "_").split(".")
        node = cfg
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = yaml.safe_load(raw)
    return cfg


def build_model(cfg: dict[str, Any]) -> SegModel:
    model_cfg = dict(cfg["model"])
    return create_model(model_cfg.pop("arch"), **model_cfg)


def get_dataloaders(accelerator: Accelerator, cfg: dict[str, Any], model: SegModel) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders; the seam tests can swap."""
    data, train = cfg["data"], cfg["train"]
    train_samples = read_split(data["root"], data["train_split"])[: train["max_train_samples"]]
    val_samples = read_split(data["root"], data["val_split"])[: train["max_val_samples"]]
    size, mean, std = model.input_size, model.mean, model.std
    views = getattr(model, "views", None)  # multi-view models (DynaSiam) read stacked TDC-Enhance views
    with accelerator.main_process_first():
        show = accelerator.is_local_main_process and not cfg["_no_progress"]
        train_ds = SegDataset(train_samples, train_transform(size, mean, std, train["augment"], views),
                              data["mask_encoding"], data["cache_max_side"], progress=show)
        val_ds = SegDataset(val_samples, eval_transform(size, mean, std, views), data["mask_encoding"],
                            data["cache_max_side"], progress=show)
    loader_kw = {"num_workers": train["num_workers"], "persistent_workers": train["num_workers"] > 0}
    train_dl = DataLoader(train_ds, batch_size=train["batch_size"], shuffle=True, drop_last=len(train_ds) >
                          train["batch_size"], **loader_kw)
    val_dl = DataLoader(val_ds, batch_size=train["batch_size"], shuffle=False, **loader_kw)
    return train_dl, val_dl


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Progress:
    """Epoch and best score, saved with every checkpoint so ``--resume`` continues where a run stopped."""

    def __init__(self) -> None:
        self.epoch, self.step, self.best_dice, self.best_epoch = 0, 0, -1.0, -1

    def state_dict(self) -> dict[str, float]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, float]) -> None:
        for k, v in state.items():
            setattr(self, k, type(getattr(self, k))(v))


def train_one_epoch(accelerator, model, loader, loss_fn, optimizer, scheduler, progress, cfg, max_steps) -> float:
    model.train()
    total, count, started = 0.0, 0, time.time()
    quiet = cfg["_no_progress"] and accelerator.is_local_main_process  # logs its pace instead of a progress bar
    bar = tqdm(loader, desc=f"epoch {progress.epoch + 1}", disable=not accelerator.is_local_main_process
               or cfg["_no_progress"], leave=False)
    for batch in bar:
        images = batch["image"]
        if cfg["train"]["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            outputs = model(images)
        loss = loss_fn(outputs, batch["mask"])
        aux = accelerator.unwrap_model(model).auxiliary_loss()
        if aux is not None:
            loss = loss + aux
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        progress.step += 1
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if progress.step % 10 == 0:
            accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=progress.step)
        if quiet and count % 25 == 0:
            log.info("epoch %d: step %d/%d, loss %.4f, %.2f s/step", progress.epoch + 1, count, len(loader),
                     total / count, (time.time() - started) / count)
        if max_steps is not None and progress.step >= max_steps:
            break
    return total / max(1, count)


def _dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of boolean masks (N, H, W); 1.0 when both are empty."""
    inter = (pred & target).flatten(1).sum(1).float()
    total = pred.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(inter), inter / (total - inter).clamp(min=1))
    return dice, iou


@torch.inference_mode()
def evaluate(accelerator, model, loader, cfg) -> dict[str, float]:
    """Per-image Dice and IoU at the model's input size, gathered over processes, then averaged.

    ``dice``/``iou`` are the lesion region's (any foreground class). Multi-class models add ``class_dice``: for each
    foreground class, Dice over all validation pixels together, averaged over classes; it is their selection score
    (``score``). (A per-image class Dice that counts an absent class as 1.0 rewards predicting too little.)
    """
    model.eval()
    rows, sums = [], []
    for batch in tqdm(loader, desc="validate", disable=not accelerator.is_local_main_process or cfg["_no_progress"],
                      leave=False):
        images = batch["image"]
        if cfg["train"]["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(images).float()
        pred = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
        target = batch["mask"]
        rows.append(torch.stack(accelerator.gather_for_metrics(_dice_iou(pred > 0, target > 0)), dim=1).cpu())
        # Per image and class: intersection and total pixel counts, summed over the whole split afterwards.
        counts = [torch.stack([((pred == c) & (target == c)).flatten(1).sum(1), (pred == c).flatten(1).sum(1)
                               + (target == c).flatten(1).sum(1)], dim=1) for c in range(1, logits.shape[1])]
        if counts:
            sums.append(accelerator.gather_for_metrics(torch.stack(counts, dim=1)).sum(0).cpu())
    table = torch.cat(rows)
    out = {"dice": table[:, 0].mean().item(), "iou": table[:, 1].mean().item()}
    if sums:
        total = torch.stack(sums).sum(0).double()  # (classes, 2)
        out["class_dice"] = (2 * total[:, 0] / total[:, 1].clamp(min=1)).mean().item()
    out["score"] = out.get("class_dice", out["dice"])
    return out


def resolve_resume_path(resume: str | None, output_dir: Path) -> Path | None:
    """``latest`` -> the newest checkpoint of this run; a path -> that path; None -> no resume."""
    if resume is None:
        return None
    if resume == "latest":
        ckpts = sorted((output_dir / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
        if not ckpts:
            raise SystemExit(f"--resume latest: no checkpoint in {output_dir / 'checkpoints'}")
        return ckpts[-1]
    path = Path(resume)
    if not path.is_dir():
        raise SystemExit(f"--resume: no checkpoint folder {path}")
    return path


def _flat_hparams(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            out.update(_flat_hparams(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _recipe_text(cfg: dict[str, Any], config_path: str, device: str, seconds: float, best: Progress) -> str:
    t = cfg["train"]
    return (
        f"`{config_path}`: {t['epochs']} epochs, batch {t['batch_size']}, AdamW lr {t['lr']} "
        f"(weight decay {t['weight_decay']}, {t['warmup_epochs']} warm-up epochs, cosine decay), loss "
        f"`{t['loss']}`, augmentation strength {t['augment']}, input {cfg['model'].get('input_size', 'default')} px. "
        f"Trained on {device} in {seconds / 60:.0f} minutes; best validation Dice {best.best_dice:.4f} "
        f"(epoch {best.best_epoch}, at input resolution)."
    )


def main(argv: list[str] | None = None) -> Path:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config, overrides)
    cfg["_no_progress"] = args.no_progress
    output_dir = Path(args.output_dir or Path("runs") / cfg["name"])
    precision = cfg["train"]["precision"]
    if precision == "auto":
        # bf16 autocast is fast on GPUs and on CPUs with bf16 units (AVX512-BF16/AMX), and harmless elsewhere.
        precision = "bf16"
    accelerator = Accelerator(
        mixed_precision=precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=True,
                                            total_limit=2),
    )
    set_seed(args.seed)
    model = build_model(cfg)
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    train_dl, val_dl = get_dataloaders(accelerator, cfg, model)
    t = cfg["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes)
    total_steps = t["epochs"] * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, max(1, round(t["warmup_epochs"] * steps_per_epoch)))
    )
    loss_fn = build_loss(t["loss"], model.num_classes)
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    resume = resolve_resume_path(args.resume, output_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.project_configuration.iteration = int(resume.name.split("_")[-1]) + 1
        log.info("resumed from %s at epoch %d (best Dice %.4f)", resume, progress.epoch, progress.best_dice)
    accelerator.init_trackers(cfg["name"].replace("/", "_"), config=_flat_hparams(cfg))
    model_dir = output_dir / "model"
    started = time.time()
    while progress.epoch < t["epochs"] and (args.max_steps is None or progress.step < args.max_steps):
        train_loss = train_one_epoch(accelerator, model, train_dl, loss_fn, optimizer, scheduler, progress, cfg,
                                     args.max_steps)
        val = evaluate(accelerator, model, val_dl, cfg)
        progress.epoch += 1
        accelerator.log({**{f"val/{k}": v for k, v in val.items()}, "train/epoch_loss": train_loss},
                        step=progress.step)
        log.info("epoch %d/%d: train loss %.4f, val %s", progress.epoch, t["epochs"], train_loss,
                 ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
        if val["score"] > progress.best_dice:
            progress.best_dice, progress.best_epoch = val["score"], progress.epoch
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(model_dir)
        accelerator.save_state()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        saved = accelerator.unwrap_model(model)
        device = "GPU" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
        (output_dir / "train_summary.json").write_text(json.dumps(
            {"best_val_dice": progress.best_dice, "best_epoch": progress.best_epoch, "epochs": progress.epoch,
             "steps": progress.step, "seconds": time.time() - started, "device": device,
             "config": {k: v for k, v in cfg.items() if not k.startswith("_")}}, indent=2))
        write_model_card(
            model_dir,
            name=cfg["name"],
            config=saved.config,
            data=f"Trained on split `{cfg['data']['train_split']}`, model selected on `{cfg['data']['val_split']}` "
            f"(split files in `{cfg['data']['root']}/splits`).",
            recipe=_recipe_text(cfg, args.config, device, time.time() - started, progress),
        )
        log.info("best model (epoch %d, val Dice %.4f) in %s", progress.best_epoch, progress.best_dice, model_dir)
        if args.push_to_hub:
            try:
                log.info("pushed to %s", push_model(model_dir, args.push_to_hub))
            except Exception as err:  # noqa: BLE001 - the weights are saved; say why the upload failed
                log.error("could not push to the Hub (%s: %s); the weights are in %s", type(err).__name__, err,
                          model_dir)
                accelerator.end_training()
                raise SystemExit(1) from err
    accelerator.end_training()
    return model_dir


if __name__ == "__main__":
    main()
