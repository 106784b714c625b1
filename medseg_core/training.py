"""Training in the shape of the Accelerate examples: ``get_dataloaders``, ``train_one_epoch``, ``evaluate``, ``main``.

    medseg-train --config train/configs/unet_lite0_polyp.yaml [--train.epochs 2 ...]
    accelerate launch train/train.py --config ...       (the same loop, on several processes or GPUs)

Hyperparameters live in the YAML recipe (:mod:`medseg_core.config`); infrastructure in flags. The best model by
validation score is written to ``<output-dir>/model`` (``from_pretrained`` loads it); ``save_state`` checkpoints go
to ``<output-dir>/checkpoints`` and ``--resume`` continues from one.

Resuming reads only safe formats (safetensors, JSON, tensors through ``torch.load(weights_only=True)``) from a folder
whose files match the list its marker keeps (:func:`medseg_core.checkpoint.verify_checkpoint`). Any other folder,
such as an older trainer's checkpoint with pickled ``custom_checkpoint_*.pkl`` files, is refused unless
``--trust-resume`` is given: a pickle runs code when loaded, so such a run folder is trusted as code is.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import (
    EMA_FILE,
    PROGRESS_FILE,
    NonFiniteLossError,
    UnverifiedCheckpointError,
    check_finite,
    find_latest_checkpoint,
    nonfinite_tensors,
    save_checkpoint,
    unreadable_samples,
    verify_checkpoint,
)
from .cli import UsageError, setup_logging
from .commands import parse_train_args
from .config import RecipeError, load_config, recipe_schema
from .data import (
    MixedBatchSampler,
    RepeatFactorSampler,
    SegDataset,
    class_repeat_factors,
    recipe_split,
    repeat_factors,
)
from .hub import push_model, resolve_weights, write_model_card
from .labels import LabelSchema
from .losses import build_loss
from .metrics import split_class_dice
from .models import SegModel, create_model
from .transforms import eval_transform, train_transform

__all__ = [
    "Progress",
    "build_model",
    "build_optimizer",
    "auto_precision",
    "build_scheduler",
    "evaluate",
    "get_dataloaders",
    "init_weights",
    "load_checkpoint",
    "main",
    "recipe_text",
    "rescale_batch",
    "resolve_resume_path",
    "run",
    "train_one_epoch",
    "warmup_cosine",
]

log = logging.getLogger("medseg.train")


def build_model(cfg: dict[str, Any]) -> SegModel:
    """The recipe's model: ``model.arch`` from the registry, built with the other ``model`` keys."""
    model_cfg = dict(cfg["model"])
    return create_model(model_cfg.pop("arch"), **model_cfg)


def init_weights(model: SegModel, spec: str, reset_head: bool = False) -> Path:
    """Load ``train.init_from``'s weights (a ``weights/`` name, a folder or a Hub id) into ``model``; every tensor must
    fit (same architecture, encoder and outputs), else :class:`RecipeError` says which do not. Returns the folder.

    With ``reset_head`` (``train.init_reset_head``) the output layers may differ in their number of outputs only, as
    when a timm classifier is loaded for other classes: a tensor whose first dimension is the saved model's number of
    outputs here and the recipe's there, its other dimensions the same, keeps the model's fresh initialisation, and
    the log names it. Any other difference is still an error; when the numbers of outputs agree everything loads
    (with a warning), as without the option."""
    folder = resolve_weights(spec)
    file = folder / "model.safetensors"
    if not reset_head:
        try:
            safetensors.torch.load_model(model, file, strict=True)
        except RuntimeError as err:
            raise RecipeError(f"train.init_from: the weights in {folder} do not fit the recipe's model "
                              f"({str(err).splitlines()[0]} ...)") from err
        return folder
    source, target = safetensors.torch.load_file(file), model.state_dict()
    source_classes = json.loads((folder / "config.json").read_text()).get("num_classes")
    if source.keys() != target.keys():
        odd = sorted(source.keys() ^ target.keys())
        raise RecipeError(f"train.init_from: the weights in {folder} do not fit the recipe's model (tensors only one "
                          f"of them has: {', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''})")
    fresh = [k for k in target if source[k].shape != target[k].shape]
    wrong = [k for k in fresh if source[k].dim() != target[k].dim() or source[k].shape[1:] != target[k].shape[1:]
             or (source[k].shape[0], target[k].shape[0]) != (source_classes, model.num_classes)]
    if wrong:
        raise RecipeError(f"train.init_from: the weights in {folder} do not fit the recipe's model beyond its number "
                          f"of outputs ({wrong[0]}: {tuple(source[wrong[0]].shape)} against "
                          f"{tuple(target[wrong[0]].shape)})")
    model.load_state_dict({k: (target[k] if k in fresh else v) for k, v in source.items()}, strict=True)
    if not fresh:
        log.warning("train.init_reset_head: the weights in %s have this model's %d outputs, so every tensor, the "
                    "output layer's too, is loaded", folder, model.num_classes)
    for k in fresh:
        log.info("train.init_reset_head: %s starts fresh (%d outputs here, %d in %s)", k, target[k].shape[0],
                 source[k].shape[0], folder)
    return folder


def rescale_batch(images: torch.Tensor, masks: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch resized by ``factor`` (multi-scale training): images bilinear, masks nearest, the side rounded to a
    multiple of 32 so every encoder stage divides it."""
    h, w = images.shape[-2:]
    size = (max(32, round(h * factor / 32) * 32), max(32, round(w * factor / 32) * 32))
    if size == (h, w):
        return images, masks
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    m = masks if masks.dim() == 4 else masks[:, None]
    m = F.interpolate(m.float(), size=size, mode="nearest").to(masks.dtype)
    return images, (m if masks.dim() == 4 else m[:, 0])


def get_dataloaders(accelerator: Accelerator, cfg: dict[str, Any], model: SegModel,
                    schema: LabelSchema | None = None) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders; the seam tests can swap. ``schema``: the recipe's label schema (built from
    ``cfg`` when not given)."""
    data, train = cfg["data"], cfg["train"]
    train_samples = recipe_split(data, data["train_split"])[: train["max_train_samples"]]
    val_samples = recipe_split(data, data["val_split"])[: train["max_val_samples"]]
    mix = dict(data["mix_splits"] or {})
    extra_samples = {name: recipe_split(data, name) for name in mix}
    size, mean, std = model.input_size, model.mean, model.std
    views = getattr(model, "views", None)  # multi-view models (DynaSiam) read stacked TDC-Enhance views
    schema = schema or recipe_schema(cfg)
    with accelerator.main_process_first():
        show = accelerator.is_local_main_process and not cfg["_no_progress"]
        augment = train_transform(size, mean, std, train["augment"], views, train["augment_colour"],
                                  train["negative_crops"], preset=train["augment_preset"])
        train_ds = SegDataset(train_samples + [s for pool in extra_samples.values() for s in pool], augment,
                              cache_max_side=data["cache_max_side"], progress=show, schema=schema)
        val_ds = SegDataset(val_samples, eval_transform(size, mean, std, views), cache_max_side=data["cache_max_side"],
                            progress=show, schema=schema)
    loader_kw = {"num_workers": train["num_workers"], "persistent_workers": train["num_workers"] > 0}
    sampler = None
    if train["repeat_factor_threshold"]:
        presence, threshold = train_ds.class_presence(), train["repeat_factor_threshold"]
        factors = repeat_factors(presence, threshold)
        per_class = ", ".join(f"{n} in {f:.0%} of the images x{r:.2f}" for n, f, r in
                              zip(schema.foreground, presence.mean(0), class_repeat_factors(presence, threshold)))
        share = {n: float(factors[presence[:, k]].sum() / factors.sum()) for k, n in enumerate(schema.foreground)}
        log.info("repeat-factor sampling (t=%g): %s; share of draws: %s", threshold, per_class,
                 ", ".join(f"{n} {share[n]:.0%} (was {presence[:, k].mean():.0%})"
                           for k, n in enumerate(schema.foreground)))
        sampler = RepeatFactorSampler(factors, num_samples=len(train_ds))
    if mix:
        batches = MixedBatchSampler(len(train_samples), [len(p) for p in extra_samples.values()], list(mix.values()),
                                    train["batch_size"])
        log.info("mixed batches: %s of each batch from %s, the rest from %s; %d batches an epoch",
                 ", ".join(f"{share:.0%}" for share in mix.values()), ", ".join(mix), data["train_split"], len(batches))
        train_dl = DataLoader(train_ds, batch_sampler=batches, **loader_kw)
    else:
        train_dl = DataLoader(train_ds, batch_size=train["batch_size"], shuffle=sampler is None, sampler=sampler,
                              drop_last=len(train_ds) > train["batch_size"], **loader_kw)
    val_dl = DataLoader(val_ds, batch_size=train["batch_size"], shuffle=False, **loader_kw)
    return train_dl, val_dl


def build_optimizer(params: Any, train: dict[str, Any]) -> torch.optim.Optimizer:
    """``train.optimizer``: ``adamw`` (decoupled weight decay), ``adam`` (L2 weight decay, as seed 004) or ``sgd``
    (Nesterov momentum ``train.momentum``)."""
    name, lr, wd = train["optimizer"], train["lr"], train["weight_decay"]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=train["momentum"], nesterov=True)
    raise RecipeError(f"unknown optimizer {name!r}")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, train: dict[str, Any], steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``train.schedule``, stepped once per optimiser step: ``cosine`` (warm-up ``warmup_epochs``), ``exponential``
    (factor ``gamma`` every ``step_epochs`` epochs) or ``constant``."""
    name = train["schedule"]
    if name == "cosine":
        warmup = max(1, round(train["warmup_epochs"] * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))
    if name == "exponential":
        every = max(1, round(train["step_epochs"] * steps_per_epoch))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=train["gamma"])
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise RecipeError(f"unknown schedule {name!r}")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): without it, bf16 autocast is emulated and
    several times slower than fp32 (measured on an AVX2-only CPU: minutes per step instead of seconds)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def auto_precision() -> str:
    """``train.precision: auto``: bf16 autocast on GPUs that support it and on CPUs with bf16 units, else fp32."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "no"


class Progress:
    """Epoch and best score, saved with every checkpoint so ``--resume`` continues where a run stopped."""

    def __init__(self) -> None:
        self.epoch, self.step, self.best_dice, self.best_epoch = 0, 0, -1.0, -1
        # With an EMA, the trained weights themselves are validated too: one run gives the with/without-EMA rows.
        self.best_dice_no_ema, self.best_epoch_no_ema = -1.0, -1
        self.last_score = float("nan")  # the latest epoch's validation score (what ``train.select: last`` keeps)

    def state_dict(self) -> dict[str, float]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, float]) -> None:
        for k, v in state.items():
            if k in vars(self):  # only the known fields, each as its own type
                setattr(self, k, type(getattr(self, k))(v))


def _write_run_state(folder: Path, progress: Progress, ema: ModelEmaV3 | None) -> None:
    """The run's own part of a checkpoint, in safe formats: the progress as JSON, the EMA weights as safetensors."""
    (folder / PROGRESS_FILE).write_text(json.dumps(progress.state_dict(), indent=2))
    if ema is not None:
        safetensors.torch.save_model(ema, str(folder / EMA_FILE))


def load_checkpoint(accelerator: Accelerator, folder: Path, progress: Progress, ema: ModelEmaV3 | None,
                    trust: bool = False) -> None:
    """Restore a run from ``folder``: the weights, optimiser, scheduler and random states through Accelerate
    (safetensors and ``torch.load(weights_only=True)``), the progress from JSON, the EMA from safetensors.

    A folder that :func:`~medseg_core.checkpoint.verify_checkpoint` does not accept (not written by this trainer as
    it is now, changed since, or holding pickled objects) is a :class:`UsageError`, unless ``trust``: then it is
    loaded as it is, pickled ``custom_checkpoint_*.pkl`` files included (an older trainer's progress and EMA), which
    runs any code they hold."""
    try:
        verify_checkpoint(folder)
    except UnverifiedCheckpointError as err:
        if not trust:
            raise UsageError(f"medseg-train: --resume {folder}: refused: {err}. Resume only from checkpoints this "
                             "trainer wrote; a run folder from elsewhere is code (pickles run when loaded): pass "
                             "--trust-resume only for one you trust as you would trust its code") from err
        log.warning("--trust-resume: loading %s as it is (%s); any pickled object in it runs as code", folder, err)
    pickled = sorted(folder.glob("custom_checkpoint_*.pkl"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    if not pickled:
        accelerator.load_state(str(folder))
        _read_run_state(folder, progress, ema)
        return
    # An older trainer's checkpoint (trusted above): Progress, then the EMA, were pickled by Accelerate.
    objects = [progress] + ([ema] if ema is not None else [])
    if len(pickled) != len(objects):
        raise UsageError(f"medseg-train: --resume {folder}: {len(pickled)} pickled objects, but this run keeps "
                         f"{len(objects)} (progress{', EMA' if ema is not None else ''}): another recipe's checkpoint")
    with tempfile.TemporaryDirectory() as view:  # Accelerate's part without the pickles, which it would count
        for f in folder.iterdir():
            if f not in pickled:
                (Path(view) / f.name).symlink_to(f.resolve())
        accelerator.load_state(view)
    for obj, file in zip(objects, pickled):
        obj.load_state_dict(torch.load(file, map_location="cpu", weights_only=False))


def _read_run_state(folder: Path, progress: Progress, ema: ModelEmaV3 | None) -> None:
    try:
        progress.load_state_dict(json.loads((folder / PROGRESS_FILE).read_text()))
        if ema is not None:
            safetensors.torch.load_model(ema, str(folder / EMA_FILE))
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise UsageError(f"medseg-train: --resume {folder}: the run's progress or EMA cannot be read "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


def _all_finite(accelerator: Accelerator, tensors: list[torch.Tensor]) -> bool:
    """True when every process's ``tensors`` are finite (all processes take the same branch, so none waits forever).
    One fused reduction (the largest magnitude, which a NaN or an infinity makes non-finite) and one sync."""
    if not tensors:
        return True
    peak = torch.nn.utils.get_total_norm([t.detach() for t in tensors], norm_type=float("inf"))
    return bool(torch.isfinite(accelerator.gather(peak.float().reshape(1))).all())


def train_one_epoch(accelerator, model, loader, loss_fn, optimizer, scheduler, progress, cfg, max_steps,
                    on_nan: str = "stop", checkpoint_every: int | None = None,
                    save: Callable[[], Any] | None = None, ema: ModelEmaV3 | None = None) -> float:
    """One pass over the training loader; returns the mean loss of the batches learnt from (NaN when none was).

    A NaN or infinite loss, BatchNorm statistics or gradients raise :class:`~medseg_core.checkpoint.NonFiniteLossError`
    naming the step (``on_nan="stop"``), or skip that batch (``"skip"``: the step is counted, nothing is learnt).
    A skipped batch leaves the model as it was: no optimiser step, and the buffers its forward pass updated
    (BatchNorm's running statistics) are put back from a copy taken before it. (Under fp16 the gradient scaler
    skips steps with overflowing gradients itself and lowers its scale, so the gradients are not checked here.)
    ``save`` is called after every ``checkpoint_every`` optimiser steps; ``ema`` (when given) is updated after each.
    ``train.scales`` resizes each batch by one of its factors, drawn at random."""
    model.train()
    total, count, started = 0.0, 0, time.time()
    quiet = cfg["_no_progress"] and accelerator.is_local_main_process  # logs its pace instead of a progress bar
    bar = tqdm(loader, desc=f"epoch {progress.epoch + 1}", disable=not accelerator.is_local_main_process
               or cfg["_no_progress"], leave=False)
    scales = cfg["train"].get("scales")
    buffers = list(model.buffers())
    statistics = [b for b in buffers if b.is_floating_point()]  # BatchNorm's running means and variances, ...
    check_grads = accelerator.scaler is None
    for batch in bar:
        images, masks = batch["image"], batch["mask"]
        if scales:
            images, masks = rescale_batch(images, masks, random.choice(scales))
        if cfg["train"]["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        # What the forward pass may change (BatchNorm statistics), put back if the batch is skipped.
        saved = [b.detach().clone() for b in buffers] if on_nan == "skip" else []
        with accelerator.autocast():
            outputs = model(images)
        loss = loss_fn(outputs, masks)
        aux = accelerator.unwrap_model(model).auxiliary_loss()
        if aux is not None:
            loss = loss + aux
        optimizer.zero_grad(set_to_none=True)
        problem = None
        if not _all_finite(accelerator, [loss, *statistics]):  # one sync; which of them, only when one is not
            problem = (f"the training loss is {loss.item()}" if not _all_finite(accelerator, [loss])
                       else "the BatchNorm statistics hold NaN or infinite values")  # the batch variance overflowed
        else:
            accelerator.backward(loss)
            if check_grads and not _all_finite(accelerator, [p.grad for p in model.parameters() if p.grad is not None]):
                problem = "the gradients hold NaN or infinite values"
        if problem is None:
            optimizer.step()
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=progress.step)
            total, count = total + loss.item(), count + 1
        else:
            where = f"step {progress.step + 1} (epoch {progress.epoch + 1})"
            if on_nan != "skip":
                raise NonFiniteLossError(f"{problem} at {where}; stopping (the last checkpoint is intact; lower the "
                                         "learning rate, or pass --on-nan skip)")
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, before in zip(buffers, saved):
                    buffer.copy_(before)
            log.warning("%s at %s; this batch is skipped (the weights and BatchNorm statistics are left as they "
                        "were)", problem, where)
        scheduler.step()
        progress.step += 1
        bar.set_postfix(loss=f"{total / max(1, count):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if progress.step % 10 == 0:
            accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=progress.step)
        if quiet and count and count % 25 == 0:
            log.info("epoch %d: step %d/%d, loss %.4f, %.2f s/step", progress.epoch + 1, count, len(loader),
                     total / count, (time.time() - started) / count)
        if save is not None and checkpoint_every and progress.step % checkpoint_every == 0:
            save()
        if max_steps is not None and progress.step >= max_steps:
            break
    return total / count if count else float("nan")  # NaN: every batch of the epoch was skipped


def _image_scores(pred: torch.Tensor, target: torch.Tensor, classes: int, multilabel: bool = False) -> torch.Tensor:
    """Per image (N, 2 + 2 * classes): lesion Dice and IoU (1.0 when both are empty), then for each of the
    ``classes`` foreground classes (none for binary models) its intersection and total pixel counts (summed over
    the split by ``split_class_dice``). ``pred``/``target``: class indices (N, H, W), or 0/1 (N, K, H, W)."""
    p, t = (pred.any(1), target.any(1)) if multilabel else (pred > 0, target > 0)
    inter = (p & t).flatten(1).sum(1).double()
    total = p.flatten(1).sum(1).double() + t.flatten(1).sum(1).double()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(inter), inter / (total - inter).clamp(min=1))
    columns = [dice, iou]
    for k in range(classes):
        pc, tc = (pred[:, k] > 0, target[:, k] > 0) if multilabel else (pred == k + 1, target == k + 1)
        columns += [(pc & tc).flatten(1).sum(1).double(), (pc.flatten(1).sum(1) + tc.flatten(1).sum(1)).double()]
    return torch.stack(columns, dim=1)


@torch.inference_mode()
def evaluate(accelerator, model, loader, cfg, schema: LabelSchema | None = None) -> dict[str, float]:
    """Per-image Dice and IoU at the model's input size, gathered over processes, then averaged.

    ``dice``/``iou`` are the lesion region's (any foreground class). Multi-class and multi-label models add the
    split-level ``class_dice`` (:func:`medseg_core.metrics.split_class_dice`), their selection ``score``; binary
    models are selected on ``dice``. A model whose logits hold a NaN or an infinity on any validation image gets the
    score NaN (never the best). ``schema``: the recipe's label schema (built from ``cfg`` when not given).
    """
    model.eval()
    schema = schema or recipe_schema(cfg)
    nonfinite = torch.zeros(1)
    classes = 0 if schema.task == "binary" else len(schema.foreground)
    rows = []
    for batch in tqdm(loader, desc="validate", disable=not accelerator.is_local_main_process or cfg["_no_progress"],
                      leave=False):
        images = batch["image"]
        if cfg["train"]["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(images).float()
        nonfinite += accelerator.gather(torch.tensor([int(not torch.isfinite(logits).all())],
                                                     device=logits.device)).sum().cpu()
        if schema.multilabel:
            pred = (logits > 0).long()
        else:
            pred = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
        scores = _image_scores(pred, batch["mask"], classes, schema.multilabel)
        rows.append(accelerator.gather_for_metrics(scores).cpu())
    table = torch.cat(rows)
    out = {"dice": table[:, 0].mean().item(), "iou": table[:, 1].mean().item()}
    names = schema.foreground if classes else ()
    counts = [{k: v for c, n in enumerate(names, start=1)
               for k, v in ((f"n_inter_{n}", r[2 * c].item()), (f"n_total_{n}", r[2 * c + 1].item()))} for r in table]
    out.update(split_class_dice(counts))
    out["score"] = out.get("class_dice", out["dice"])
    if nonfinite.item():
        log.warning("the model's outputs hold NaN or infinite values on %d validation batch(es): no score",
                    int(nonfinite.item()))
        out["score"] = float("nan")
    return out


def resolve_resume_path(resume: str | None, output_dir: Path) -> Path | None:
    """``latest`` -> the newest complete checkpoint of this run (one a kill left half-written is skipped); a path ->
    that path; None -> no resume."""
    if resume is None:
        return None
    if resume == "latest":
        latest = find_latest_checkpoint(output_dir / "checkpoints")
        if latest is None:
            raise UsageError(f"--resume latest: no complete checkpoint in {output_dir / 'checkpoints'}")
        return latest
    path = Path(resume)
    if not path.is_dir():
        raise UsageError(f"--resume: no checkpoint folder {path}")
    return path


def save_best(model: SegModel, model_dir: Path, config: dict[str, Any]) -> None:
    """Write the best model atomically: into a sibling folder, then swapped in, so a kill never leaves a half-written
    ``model/`` behind (the previous best stays until the new one is complete). A model with a NaN or infinite
    tensor (parameters or buffers) raises :class:`~medseg_core.checkpoint.NonFiniteModelError` and writes nothing."""
    check_finite(model, f"the model for {model_dir}")
    tmp, old = model_dir.with_name(f".{model_dir.name}.tmp"), model_dir.with_name(f".{model_dir.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, config=config)
    if model_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        model_dir.rename(old)
    tmp.rename(model_dir)
    shutil.rmtree(old, ignore_errors=True)


def check_training_data(cfg: dict[str, Any]) -> None:
    """Decode every training and validation image and mask once; ``SystemExit`` listing the unreadable ones (so a
    corrupt file is found before training, not at step 4,000)."""
    data, train = cfg["data"], cfg["train"]
    samples = (recipe_split(data, data["train_split"])[: train["max_train_samples"]]
               + [s for name in data.get("mix_splits") or {} for s in recipe_split(data, name)]
               + recipe_split(data, data["val_split"])[: train["max_val_samples"]])
    problems = unreadable_samples(samples)
    if problems:
        shown = "\n  ".join(problems[:50]) + (f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise SystemExit(f"medseg-train: {len(problems)} unreadable file(s) in the data (fix or remove them, or "
                         f"pass --skip-data-check):\n  {shown}")
    log.info("data check: %d samples, every image and mask decodes", len(samples))


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


_OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD (Nesterov momentum)"}


def recipe_text(cfg: dict[str, Any], summary: dict[str, Any] | None = None) -> str:
    """The model card's description of a recipe (and, given ``train_summary.json``'s content, of the run)."""
    t = cfg["train"]
    schedule = {
        "cosine": f"{t.get('warmup_epochs', 0)} warm-up epochs, cosine decay",
        "exponential": f"lr x {t.get('gamma')} every {t.get('step_epochs')} epochs",
        "constant": "constant lr",
    }[t.get("schedule", "cosine")]
    text = (
        f"{t['epochs']} epochs, batch {t['batch_size']}, {_OPTIMIZER_NAMES[t.get('optimizer', 'adamw')]} lr {t['lr']} "
        f"(weight decay {t['weight_decay']}, {schedule}), loss `{t['loss']}`, augmentation strength {t['augment']}"
        f"{'' if t.get('augment_colour', 1.0) == 1.0 else ', colour ranges x' + format(t['augment_colour'], 'g')}"
        f"{', lesion-free crops p=' + format(t['negative_crops'], 'g') if t.get('negative_crops') else ''}"
        f"{', repeat-factor sampling t=' + format(rft, 'g') if (rft := t.get('repeat_factor_threshold')) else ''}, "
        f"input {cfg['model'].get('input_size', 'default')} px, precision `{t['precision']}`, channels-last "
        f"{t['channels_last']}."
    )
    fresh_head = " (output layer fresh where its number of outputs differs)" if t.get("init_reset_head") else ""
    extras = [f"initialised from `{t['init_from']}`{fresh_head}" if t.get("init_from") else "",
              "Dice term over the whole batch (batch Dice)" if t.get("batch_dice") else "",
              "classes absent from the target add no Dice loss" if t.get("dice_skip_absent") else "",
              "flips and 90° rotations only" if t.get("augment_preset") == "flips" else "",
              "the last weights kept (no selection on validation)" if t.get("select") == "last" else "",
              f"EMA of weights (decay {t['ema']})" if t.get("ema") else "",
              f"multi-scale training (x{', x'.join(str(f) for f in t['scales'])})" if t.get("scales") else ""]
    extra = "; ".join(e for e in extras if e)
    if extra:
        text += f" {extra[0].upper()}{extra[1:]}."
    if summary and "last_val_score" in summary:
        text += (f" Trained on {summary['device']} in {summary['seconds'] / 60:.0f} minutes; validation score "
                 f"{summary['last_val_score']:.4f} at the last epoch, {summary['last_epoch']} (at input resolution).")
    elif summary:
        text += (f" Trained on {summary['device']} in {summary['seconds'] / 60:.0f} minutes; best validation score "
                 f"{summary['best_val_dice']:.4f} at epoch {summary['best_epoch']} (at input resolution).")
    return text


def data_text(cfg: dict[str, Any]) -> str:
    """The model card's description of the data a recipe trains on."""
    d = cfg["data"]
    val = d["val_split"] if isinstance(d["val_split"], str) else "` + `".join(d["val_split"])
    mix = d.get("mix_splits") or {}
    mixed = "".join(f", with {share:.0%} of every batch drawn from `{name}`" for name, share in mix.items())
    where = (f"the UW-Madison GI Tract competition's train.csv and slices, about {d['val_fraction']:g} of the "
             f"slices held out as `val` in whole cases" if d.get("layout") == "uwmgi_competition"
             else f"split files in `{d['root']}/splits`")
    return (f"Trained on split `{d['train_split']}`{mixed}, model selected on `{val}` ({where}); mask encoding "
            f"`{d['mask_encoding']}`.")


def main(argv: list[str] | None = None) -> Path:
    """Train from a recipe as the command line ``argv`` says (see ``medseg-train --help``); returns the folder of
    the best model."""
    return run(parse_train_args(argv))


def run(args: argparse.Namespace) -> Path:
    """:func:`main` on parsed arguments (``medseg-train`` calls this); recipe mistakes are usage errors."""
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
    except RecipeError as err:
        raise UsageError(f"medseg-train: {err}") from err
    cfg["_no_progress"] = args.no_progress
    schema = recipe_schema(cfg)  # built once, passed to the data, the loss, validation and the saved models
    output_dir = Path(args.output_dir or Path("runs") / cfg["name"])
    t = cfg["train"]
    precision = auto_precision() if t["precision"] == "auto" else t["precision"]
    log.info("mixed precision: %s", precision)
    accelerator = Accelerator(
        mixed_precision=precision,
        log_with="tensorboard",
        # Checkpoints are named, written and pruned by medseg_core.checkpoint (atomically), not by Accelerate.
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=False),
    )
    if not args.skip_data_check:
        check_training_data(cfg)
    set_seed(args.seed)
    model = build_model(cfg)
    if t["init_from"]:
        try:
            log.info("initial weights from %s", init_weights(model, t["init_from"], t["init_reset_head"]))
        except (RecipeError, OSError, ValueError) as err:
            raise UsageError(f"medseg-train: {err}") from err
    if t["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    train_dl, val_dl = get_dataloaders(accelerator, cfg, model, schema)
    optimizer = build_optimizer(model.parameters(), t)
    steps_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes)
    total_steps = t["epochs"] * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch, total_steps)
    loss_fn = build_loss(t["loss"], model.num_classes, multilabel=schema.multilabel, batch_dice=t["batch_dice"],
                         dice_skip_absent=t["dice_skip_absent"])
    model, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, val_dl, scheduler)
    progress = Progress()
    # The average lives outside Accelerate's wrapping: validated, saved and checkpointed in place of the weights.
    # Neither is registered with Accelerate (which would pickle them): the checkpoint writes them as JSON and
    # safetensors (_write_run_state).
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=t["ema"]) if t["ema"] else None
    resume = resolve_resume_path(args.resume, output_dir)
    if resume is not None:
        load_checkpoint(accelerator, resume, progress, ema, trust=args.trust_resume)
        log.info("resumed from %s at epoch %d (best score %.4f)", resume, progress.epoch, progress.best_dice)
    accelerator.init_trackers(cfg["name"].replace("/", "_"), config=_flat_hparams(cfg))
    model_dir = output_dir / "model"
    started = time.time()
    checkpoints = output_dir / "checkpoints"

    def save() -> None:
        save_checkpoint(accelerator, checkpoints, progress.step, keep=args.keep_checkpoints,
                        info={"epoch": progress.epoch}, extra=lambda folder: _write_run_state(folder, progress, ema))

    while progress.epoch < t["epochs"] and (args.max_steps is None or progress.step < args.max_steps):
        # A checkpoint from the middle of an epoch: continue that epoch after the batches it had done.
        done = progress.step - progress.epoch * steps_per_epoch
        loader = accelerator.skip_first_batches(train_dl, min(done, len(train_dl))) if done > 0 else train_dl
        try:
            train_loss = train_one_epoch(accelerator, model, loader, loss_fn, optimizer, scheduler, progress, cfg,
                                         args.max_steps, on_nan=args.on_nan,
                                         checkpoint_every=args.checkpoint_every, save=save, ema=ema)
        except NonFiniteLossError as err:
            accelerator.end_training()
            raise SystemExit(f"medseg-train: {err}") from err
        val = evaluate(accelerator, model if ema is None else ema.module, val_dl, cfg, schema)
        best = accelerator.unwrap_model(model) if ema is None else ema.module
        progress.epoch += 1
        progress.last_score = val["score"]
        accelerator.log({**{f"val/{k}": v for k, v in val.items()}, "train/epoch_loss": train_loss,
                         "train/epoch": progress.epoch}, step=progress.step)
        log.info("epoch %d/%d: train loss %.4f, val %s", progress.epoch, t["epochs"], train_loss,
                 ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
        if ema is not None:
            _validate_without_ema(accelerator, model, val_dl, cfg, schema, progress, output_dir / "model_no_ema")
        if val["score"] > progress.best_dice and _finite(best, f"epoch {progress.epoch}'s model"):
            progress.best_dice, progress.best_epoch = val["score"], progress.epoch
            if accelerator.is_main_process and t["select"] == "best":
                save_best(best, model_dir, schema.to_config())
        save()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model) if ema is None else ema.module
        # The last weights are kept only when they and their outputs are finite (a NaN score: non-finite logits).
        if t["select"] == "last" and math.isfinite(progress.last_score) and _finite(final, "the last model"):
            save_best(final, model_dir, schema.to_config())
        _finish(final, cfg, schema, args, output_dir, model_dir, progress, time.time() - started, accelerator)
    accelerator.end_training()
    return model_dir


def _finite(model: torch.nn.Module, what: str) -> bool:
    """Whether every tensor of ``model`` (parameters and buffers) is finite; a warning names the others."""
    bad = nonfinite_tensors(model)
    if bad:
        log.warning("%s is not saved: NaN or infinite values in %d tensors (%s%s)", what, len(bad),
                    ", ".join(bad[:3]), ", ..." if len(bad) > 3 else "")
    return not bad


def _validate_without_ema(accelerator: Accelerator, model, val_dl, cfg: dict[str, Any], schema: LabelSchema,
                          progress: Progress, model_dir: Path) -> None:
    """Validate the trained weights (not their average), log them as ``val_no_ema/*`` and keep the best in
    ``model_dir``: what the same run gives without the EMA lever, at the cost of one more validation pass."""
    val = evaluate(accelerator, model, val_dl, cfg, schema)
    trained = accelerator.unwrap_model(model)
    accelerator.log({f"val_no_ema/{k}": v for k, v in val.items()}, step=progress.step)
    log.info("epoch %d, without EMA: val %s", progress.epoch, ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
    if val["score"] > progress.best_dice_no_ema and _finite(trained, f"epoch {progress.epoch}'s model without EMA"):
        progress.best_dice_no_ema, progress.best_epoch_no_ema = val["score"], progress.epoch
        if accelerator.is_main_process:
            save_best(trained, model_dir, schema.to_config())


def _finish(saved: SegModel, cfg: dict[str, Any], schema: LabelSchema, args: argparse.Namespace, output_dir: Path,
            model_dir: Path, progress: Progress, seconds: float, accelerator: Accelerator) -> None:
    """Write the training summary and the model card; push to the Hub when asked. ``SystemExit`` (status 1) when no
    model was saved: every validated model had NaN or infinite weights or outputs."""
    threads = torch.get_num_threads()
    device = "GPU" if torch.cuda.is_available() else f"CPU ({threads} thread{'' if threads == 1 else 's'})"
    summary = {"best_val_dice": progress.best_dice, "best_epoch": progress.best_epoch, "epochs": progress.epoch,
               "steps": progress.step, "seconds": seconds, "device": device,
               **({"best_val_dice_no_ema": progress.best_dice_no_ema, "best_epoch_no_ema": progress.best_epoch_no_ema}
                  if cfg["train"]["ema"] else {}),
               **({"last_val_score": progress.last_score, "last_epoch": progress.epoch}
                  if cfg["train"]["select"] == "last" else {}),
               "config": {k: v for k, v in cfg.items() if not k.startswith("_")}}
    (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if not (model_dir / "model.safetensors").is_file():
        accelerator.end_training()
        raise SystemExit(f"medseg-train: no model saved: every validated model had NaN or infinite weights or outputs "
                         f"(see the warnings above); lower train.lr (now {cfg['train']['lr']:g}) or check the data")
    write_model_card(model_dir, name=cfg["name"], config={**saved.config, **schema.to_config()},
                     data=data_text(cfg),
                     recipe=f"`{args.config}`: " + recipe_text(cfg, summary))
    if cfg["train"]["select"] == "last":
        log.info("last model (epoch %d, val score %.4f) in %s", progress.epoch, progress.last_score, model_dir)
    else:
        log.info("best model (epoch %d, val score %.4f) in %s", progress.best_epoch, progress.best_dice, model_dir)
    if args.push_to_hub:
        try:
            log.info("pushed to %s", push_model(model_dir, args.push_to_hub))
        except Exception as err:  # noqa: BLE001 - the weights are saved; say why the upload failed
            log.error("could not push to the Hub (%s: %s); the weights are in %s", type(err).__name__, err, model_dir)
            accelerator.end_training()
            raise SystemExit(1) from err
