"""Training state that survives ``kill -9``: atomic checkpoints, finding the newest complete one, a data check.

A checkpoint is written by Accelerate's ``save_state`` into a hidden temporary folder, every file and the folder
are fsync'ed, a marker (:data:`MARKER`) is written last, and only then is the folder renamed to
``checkpoint_<step>``; older checkpoints are deleted after the rename. A kill at any moment leaves either the
previous complete checkpoints or the new one, never a half-written ``checkpoint_<step>`` that ``--resume latest``
would pick (a folder without the marker is skipped, with a warning).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch

__all__ = [
    "MARKER",
    "NonFiniteLossError",
    "NonFiniteModelError",
    "check_finite",
    "find_latest_checkpoint",
    "list_checkpoints",
    "nonfinite_tensors",
    "save_checkpoint",
    "unreadable_samples",
]

log = logging.getLogger(__name__)

#: Written last into a checkpoint folder: its presence means every other file is complete on disk.
MARKER = "medseg_checkpoint.json"
_NAME = re.compile(r"^checkpoint_(\d+)$")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``--on-nan stop``); the message names the step."""


class NonFiniteModelError(ValueError):
    """Weights holding a NaN or an infinity: never saved as a run's model, averaged into a soup, stored or exported."""


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor] | torch.nn.Module) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity; a module is read as its
    ``state_dict`` (parameters and buffers, BatchNorm's running statistics included)."""
    state = tensors.state_dict() if isinstance(tensors, torch.nn.Module) else tensors
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(tensors: Mapping[str, torch.Tensor] | torch.nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteModelError` (one line: how many tensors, the first names) when ``tensors`` (a state dict
    or a module) hold a NaN or an infinity."""
    bad = nonfinite_tensors(tensors)
    if bad:
        total = len(tensors.state_dict() if isinstance(tensors, torch.nn.Module) else tensors)
        raise NonFiniteModelError(f"{what} holds NaN or infinite values in {len(bad)} of {total} tensors "
                                  f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then the folders themselves (so the names are durable too)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(checkpoints_dir: str | os.PathLike, complete_only: bool = True) -> list[Path]:
    """``checkpoint_<step>`` folders, oldest first; with ``complete_only`` only those holding :data:`MARKER`."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found) if not complete_only or (p / MARKER).is_file()]


def find_latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (None when there is none); incomplete ones are skipped with a warning."""
    for path in reversed(list_checkpoints(checkpoints_dir, complete_only=False)):
        if (path / MARKER).is_file():
            return path
        if (path / "random_states_0.pkl").is_file() and not any(path.glob("*.tmp")):
            # Written before checkpoints had markers: Accelerate saves the RNG states last.
            log.warning("%s has no %s (an older run's checkpoint); resuming from it", path.name, MARKER)
            return path
        log.warning("skipping %s: it has no %s, so it was not completely written (the run was killed while "
                    "saving)", path.name, MARKER)
    return None


def save_checkpoint(accelerator: Any, checkpoints_dir: str | os.PathLike, step: int, keep: int = 2,
                    info: dict[str, Any] | None = None) -> Path:
    """``accelerator.save_state`` into ``checkpoints_dir/checkpoint_<step>`` atomically; keep the newest ``keep``.

    Every process calls this (``save_state`` saves per-process RNG states); the main process fsyncs, writes the
    marker, renames and prunes. Returns the final folder."""
    root = Path(checkpoints_dir)
    final = root / f"checkpoint_{step}"
    tmp = root / f".tmp-checkpoint_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = {"step": step, "saved_at": time.time(), **(info or {})}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        _fsync_tree(tmp)
        if final.exists():  # the same step saved twice (e.g. at an epoch end that is also an N-step point)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(root, complete_only=False)[:-keep] if keep > 0 else []:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def _unreadable(path: Path) -> str | None:
    """Why an image or mask file cannot be used (None when it decodes)."""
    if not path.is_file():
        return "missing"
    if path.suffix.lower() in (".csv", ".json", ".txt"):
        return None  # run-length or other table encodings: read by the dataset itself
    try:
        with PIL.Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return None


def unreadable_samples(samples: Iterable[Any]) -> list[str]:
    """One line per unreadable image or mask of ``samples`` (objects with ``id``, ``image``, ``mask``, optional
    ``prob``): ``"<id>: image <file> missing"``. An empty list means every file decodes."""
    problems = []
    for sample in samples:
        masks: Sequence[Any] = sample.mask if isinstance(sample.mask, (list, tuple)) else [sample.mask]
        files = [("image", sample.image), *[("mask", m) for m in masks if m is not None]]
        if getattr(sample, "prob", None) is not None:
            files.append(("probability map", sample.prob))
        for kind, file in files:
            why = _unreadable(Path(file))
            if why:
                problems.append(f"{sample.id}: {kind} {Path(file).name} {why}")
    return problems
