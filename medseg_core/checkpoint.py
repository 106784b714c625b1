"""Training state that survives ``kill -9``: atomic checkpoints, finding the newest complete one, a data check.

A checkpoint is written by Accelerate's ``save_state`` into a hidden temporary folder, every file and the folder
are fsync'ed, a marker (:data:`MARKER`) is written last, and only then is the folder renamed to
``checkpoint_<step>``; older checkpoints are deleted after the rename. A kill at any moment leaves either the
previous complete checkpoints or the new one, never a half-written ``checkpoint_<step>`` that ``--resume latest``
would pick (a folder without the marker is skipped, with a warning).

A checkpoint holds no pickled Python objects (format :data:`CHECKPOINT_FORMAT`): the weights in safetensors, the
optimiser, scheduler and random-number states as tensors that Accelerate reads with ``torch.load(weights_only=True)``,
the run's progress as JSON (:data:`PROGRESS_FILE`) and the EMA weights in safetensors (:data:`EMA_FILE`). The
marker lists every file with its SHA-256; :func:`verify_checkpoint` refuses a folder whose files differ from the
list, or that holds pickled objects (``custom_checkpoint_*.pkl``, which run code when loaded). The hashes show that
a folder is complete and unchanged since it was written, not who wrote it: a run folder from someone else is
trusted only as far as its formats are safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "EMA_FILE",
    "MARKER",
    "PROGRESS_FILE",
    "UnverifiedCheckpointError",
    "NonFiniteLossError",
    "NonFiniteModelError",
    "check_finite",
    "find_latest_checkpoint",
    "list_checkpoints",
    "nonfinite_tensors",
    "save_checkpoint",
    "unreadable_samples",
    "verify_checkpoint",
]

log = logging.getLogger(__name__)

#: Written last into a checkpoint folder: its presence means every other file is complete on disk.
MARKER = "medseg_checkpoint.json"
_NAME = re.compile(r"^checkpoint_(\d+)$")
#: The checkpoint layout written now: no pickled objects, every file listed in the marker with its SHA-256.
CHECKPOINT_FORMAT = 2
#: The run's progress (epoch, step, best scores), JSON.
PROGRESS_FILE = "progress.json"
#: The exponential moving average of the weights (``train.ema``), safetensors.
EMA_FILE = "ema.safetensors"
_PICKLED = "custom_checkpoint_*.pkl"  # Accelerate's register_for_checkpointing objects, loaded with full pickle
_MAX_MARKER_BYTES = 1 << 20


class UnverifiedCheckpointError(ValueError):
    """A checkpoint folder that is not as this trainer writes it: no marker or file list (an older trainer's, or not
    a trainer's), a file changed, added or missing since it was written, or pickled Python objects."""


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the marker, as relative POSIX paths; a link or special file is an
    :class:`UnverifiedCheckpointError` (a checkpoint holds plain files and folders only)."""
    names = []
    for p in folder.rglob("*"):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise UnverifiedCheckpointError(f"it holds a link or special file ({p.relative_to(folder).as_posix()})")
        if p.is_file() and p != folder / MARKER:
            names.append(p.relative_to(folder).as_posix())
    return sorted(names)


def _manifest(folder: Path) -> dict[str, str]:
    return {name: _sha256(folder / name) for name in _files(folder)}


def verify_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """The marker of a checkpoint folder written by this trainer (format :data:`CHECKPOINT_FORMAT`), after checking
    that its files are exactly those the marker lists, with the same SHA-256, and that none is a pickled object;
    raises :class:`UnverifiedCheckpointError` saying what differs."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        raise UnverifiedCheckpointError(f"it has no {MARKER}, so it was not written (completely) by this trainer")
    try:
        if marker.stat().st_size > _MAX_MARKER_BYTES:
            raise ValueError("too large")
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise UnverifiedCheckpointError(f"its {MARKER} cannot be read ({type(err).__name__})") from err
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT or not isinstance(info.get("files"), dict):
        raise UnverifiedCheckpointError(f"its {MARKER} lists no files (a checkpoint of an older trainer, whose "
                                        "custom_checkpoint_*.pkl files are pickles, or not a trainer's)")
    pickled = sorted(p.name for p in folder.glob(_PICKLED))
    if pickled:
        raise UnverifiedCheckpointError(f"it holds pickled Python objects ({', '.join(pickled)}), which run code when "
                                        "loaded")
    listed, found = info["files"], _files(folder)
    extra, missing = sorted(set(found) - set(listed)), sorted(set(listed) - set(found))
    if extra or missing:
        raise UnverifiedCheckpointError("its files differ from those it was written with ("
                                        + "; ".join(f"{what}: {', '.join(names[:3])}" for what, names in
                                                    (("added", extra), ("missing", missing)) if names) + ")")
    changed = [name for name in found if _sha256(folder / name) != listed[name]]
    if changed:
        raise UnverifiedCheckpointError(f"its files changed since it was written ({', '.join(changed[:3])})")
    return info


def save_checkpoint(accelerator: Any, checkpoints_dir: str | os.PathLike, step: int, keep: int = 2,
                    info: dict[str, Any] | None = None, extra: Callable[[Path], None] | None = None) -> Path:
    """``accelerator.save_state`` into ``checkpoints_dir/checkpoint_<step>`` atomically; keep the newest ``keep``.

    Every process calls this (``save_state`` saves per-process RNG states); the main process calls ``extra`` on
    the folder (to write the run's own state, e.g. :data:`PROGRESS_FILE`), writes the marker listing every file with
    its SHA-256, fsyncs, renames and prunes. Returns the final folder."""
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
        if extra is not None:
            extra(tmp)
        marker = {"format": CHECKPOINT_FORMAT, "step": step, "saved_at": time.time(), **(info or {}),
                  "files": _manifest(tmp)}
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
