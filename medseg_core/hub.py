"""Where weights come from: a local folder, a name under ``weights/``, or a Hugging Face Hub repo id (cached).

Everything goes through ``huggingface_hub``: a repo id is fetched with ``snapshot_download`` into the usual cache;
when the Hub cannot be reached, the cached copy is used; when there is none, :class:`WeightsNotFoundError`
says so in words a user can act on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from .models import SegModel, get_model_class
from .postprocess import POSTPROCESSING_STEPS

__all__ = [
    "WEIGHTS_DIR",
    "WeightsNotFoundError",
    "list_local_weights",
    "load_model",
    "push_model",
    "record_postprocess",
    "recorded_postprocess",
    "resolve_weights",
    "write_model_card",
]

log = logging.getLogger(__name__)



def _default_weights_dir() -> Path:
    """``MEDSEG_WEIGHTS_DIR``; else ``weights/`` beside the package (a source checkout or an editable install);
    else ``weights/`` in the working folder (a package installed from a clone, run from that clone)."""
    if os.environ.get("MEDSEG_WEIGHTS_DIR"):
        return Path(os.environ["MEDSEG_WEIGHTS_DIR"])
    beside = Path(__file__).resolve().parents[1] / "weights"
    return beside if beside.is_dir() else Path("weights")


#: The shipped default weights.
WEIGHTS_DIR = _default_weights_dir()
#: What a weights folder holds, also one level down (a helper model such as the refiner the config names).
_WEIGHT_FILES = ["config.json", "model.safetensors", "README.md", "*/config.json", "*/model.safetensors", "*/README.md"]


class WeightsNotFoundError(FileNotFoundError):
    """No weights under that name: not a folder, not in ``weights/``, not reachable or cached on the Hub."""


def _is_weights_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _segments_images(folder: Path) -> bool:
    """False for weights of helper models (e.g. the ``refine`` step's refiner), which segment nothing alone."""
    try:
        arch = json.loads((folder / "config.json").read_text()).get("arch")
        return get_model_class(arch).info.segments_images
    except (ValueError, KeyError, TypeError, OSError):
        return True  # listed; loading it will say what is wrong


def list_local_weights(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the segmentation models under ``weights/`` (folders with config.json and model.safetensors),
    without helper models such as refiners."""
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _is_weights_dir(p) and _segments_images(p))


def resolve_weights(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder holding ``config.json`` + ``model.safetensors`` for a folder, a ``weights/`` name or a repo id.

    A repo id (``owner/name``) is downloaded through ``huggingface_hub`` (only the json, safetensors and card
    files), or taken from the local cache when the Hub is unreachable or ``HF_HUB_OFFLINE=1``.
    """
    path = Path(name_or_path)
    if _is_weights_dir(path):
        return path
    if _is_weights_dir(WEIGHTS_DIR / str(name_or_path)):
        return WEIGHTS_DIR / str(name_or_path)
    repo_id = str(name_or_path)
    if path.exists() or repo_id.count("/") != 1:
        known = ", ".join(list_local_weights()) or "none"
        raise WeightsNotFoundError(
            f"{repo_id!r} is neither a folder with config.json and model.safetensors, nor a name in "
            f"{WEIGHTS_DIR} (available: {known}), nor a Hub repo id of the form owner/name"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_WEIGHT_FILES, cache_dir=cache_dir))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        online_error = err
    try:
        # Offline or unreachable: fall back to what is already cached.
        local = Path(snapshot_download(repo_id, allow_patterns=_WEIGHT_FILES, cache_dir=cache_dir,
                                       local_files_only=True))
        log.warning("the Hub is unreachable (%s); using the cached copy of %s", online_error, repo_id)
        return local
    except (LocalEntryNotFoundError, OSError) as err:
        raise WeightsNotFoundError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(online_error).__name__}) and it is not in "
            "the local cache. Connect to the internet once, or copy the weights folder into weights/."
        ) from err


def load_model(name_or_path: str | os.PathLike, map_location: str = "cpu", cache_dir: str | None = None) -> SegModel:
    """Rebuild any saved model from its folder, ``weights/`` name or Hub repo id, in eval mode."""
    folder = resolve_weights(name_or_path, cache_dir=cache_dir)
    config = json.loads((folder / "config.json").read_text())
    if "arch" not in config:
        raise ValueError(f"{folder / 'config.json'} does not say which architecture it is (no 'arch' key)")
    return get_model_class(config["arch"]).from_pretrained(folder, map_location=map_location)


def recorded_postprocess(folder: str | os.PathLike) -> dict[str, Any]:
    """The post-processing recorded in a weights folder's ``config.json``: ``{"steps": [...], "refiner": ...}``.

    ``steps`` are names from ``medseg_core.postprocess`` (empty when none is recorded); ``refiner`` is where the
    ``refine`` step's model lives, resolved here: a folder relative to the weights folder, else a ``weights/``
    name or a Hub repo id as written (None when not recorded).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    steps = list(config.get("postprocess") or [])
    unknown = [s for s in steps if s not in POSTPROCESSING_STEPS]
    if unknown:
        raise ValueError(f"{folder / 'config.json'} records unknown post-processing steps {unknown}; known: "
                         f"{', '.join(sorted(POSTPROCESSING_STEPS))}")
    refiner = config.get("refiner")
    if refiner and _is_weights_dir(folder / refiner):
        refiner = str(folder / refiner)
    return {"steps": steps, "refiner": refiner}


def record_postprocess(folder: str | os.PathLike, steps: Sequence[str], refiner: str | None = None) -> Path:
    """Write the chosen post-processing chain (and the refiner it needs) into a weights folder's ``config.json``.

    A refiner inside the weights folder is recorded by its path relative to it, so the folder stays self-contained
    (copied, pushed to the Hub, downloaded); otherwise ``refiner`` is recorded as given (a ``weights/`` name or a
    Hub repo id)."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["postprocess"] = list(steps)
    if refiner:
        inside = Path(refiner).resolve()
        if inside.is_relative_to(Path(folder).resolve()):  # a refiner kept in the weights folder travels with it
            refiner = inside.relative_to(Path(folder).resolve()).as_posix()
        config["refiner"] = refiner
    else:
        config.pop("refiner", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def _metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    keys = ["dice", "iou", "accuracy", "precision", "recall", "hd95"]
    extra = ("class_dice", "class_dice_1", "class_dice_2", "class_dice_3", "mdice")
    keys += [k for k in extra if any(k in m for m in metrics.values())]
    rows = ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for split, m in metrics.items():
        rows.append(f"| {split} | " + " | ".join(f"{m[k]:.4f}" if k in m else "—" for k in keys) + " |")
    return "\n".join(rows)


def write_model_card(
    folder: str | os.PathLike,
    *,
    name: str,
    config: Mapping[str, Any],
    data: str,
    recipe: str,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    notes: str = "",
) -> Path:
    """Write ``README.md`` for a weights folder: what the model is, the data and split, recipe, measured metrics."""
    cls = get_model_class(config["arch"])
    measured = _metrics_table(metrics) if metrics else "Not measured yet: run `train/evaluate.py` and add it here."
    text = f"""---
library_name: medseg
license: apache-2.0
pipeline_tag: image-segmentation
tags: [medical-imaging, image-segmentation, endoscopy, polyp]
---

# {name}

Architecture `{config['arch']}` ({cls.info.paper}), encoder `{config.get('encoder', '—')}`
(initialised from `{config.get('encoder_weights')}`), {config['num_classes']} output channel(s),
input {config['input_size']}×{config['input_size']}, normalisation mean {config['mean']} std {config['std']}.

Load it with `medseg_core.load_model("{name}")` or `medseg_core.Segmenter.from_pretrained(...)`.

## Data
{data}

## Training recipe
{recipe}

## Measured metrics
Per-image metrics at the original image resolution, threshold 0.5, averaged over images
(`train/evaluate.py`; HD95 in pixels):

{measured}

{notes}
"""
    path = Path(folder) / "README.md"
    path.write_text(text)
    return path


def push_model(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a weights folder (config, safetensors, model card) to a Hub model repo; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=_WEIGHT_FILES,
                             commit_message="Upload medseg weights")
    return str(info)
