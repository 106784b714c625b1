"""Where weights come from: a local folder, a name under ``weights/``, or a Hugging Face Hub repo id (cached).

Everything goes through ``huggingface_hub``: a repo id is fetched with ``snapshot_download`` into the usual cache;
when the Hub cannot be reached, the cached copy is used; when there is none, :class:`WeightsNotFoundError`
says so in words a user can act on.

Every route returns a :class:`~medseg_core.weights.Weights` (:func:`resolve`): the folder's ``config.json`` read
once and validated, with its label schema, recorded steps and file paths, which ``Segmenter.from_pretrained``, the
app and the commands then share. :func:`scan_local_weights` reads ``weights/`` so that one bad folder is one
refused model, with its reason, and the others are served.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from .cli import close_matches
from .models import SegModel, get_model_class
from .safety import UnsafeWeightsError, helper_folder, validate_model_config
from .weights import Weights, read_config

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "WEIGHTS_DIR",
    "LocalWeights",
    "UnsafeWeightsError",
    "Weights",
    "WeightsNotFoundError",
    "list_local_weights",
    "load_model",
    "parse_hub_spec",
    "push_model",
    "record_class_bias",
    "record_postprocess",
    "record_presence",
    "record_thresholds",
    "recorded_postprocess",
    "resolve",
    "resolve_hub",
    "resolve_hub_weights",
    "resolve_weights",
    "scan_local_weights",
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
#: The files a download takes from a Hub repo (plus the helper sub-folder's config and weights): nothing else.
_DOWNLOAD_FILES = ("config.json", "model.safetensors", "README.md", "model.onnx")
#: What a push uploads: those files, also one level down (a helper model such as the refiner the config names).
_WEIGHT_FILES = [*_DOWNLOAD_FILES, *(f"*/{f}" for f in _DOWNLOAD_FILES if f != "model.onnx")]
#: Most bytes one model download may hold (``MEDSEG_MAX_DOWNLOAD_MB`` overrides).
MAX_DOWNLOAD_BYTES = int(float(os.environ.get("MEDSEG_MAX_DOWNLOAD_MB", "1024")) * 1_000_000)
_HUB_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w.-]{1,64}))?$")


class WeightsNotFoundError(FileNotFoundError):
    """No weights under that name: not a folder, not in ``weights/``, not reachable or cached on the Hub."""


def _is_weights_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@dataclass(frozen=True)
class LocalWeights:
    """The weights folders under ``weights/``: ``models`` (name -> :class:`Weights`) the segmentation models that
    read cleanly, ``helpers`` those of helper models (refiners), ``refused`` (name -> reason) the folders that did
    not: each refused folder is one refused model, the others are unaffected."""

    models: dict[str, Weights] = field(default_factory=dict)
    helpers: dict[str, Weights] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


#: Folders read by :func:`scan_local_weights`, by path: (what their files looked like, the Weights or the refusal).
_SCANNED: dict[str, tuple[tuple[Any, ...], Weights | str]] = {}
_SCAN_LOCK = threading.Lock()


def _signature(folder: Path) -> tuple[Any, ...]:
    """What changes when a weights folder's files change: the folder's and its files' (not followed) status."""
    out: list[Any] = []
    for p in (folder, folder / "config.json", folder / "model.safetensors", folder / "model.onnx"):
        try:
            st = p.lstat()
            out.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _scan_one(folder: Path) -> Weights | str:
    """A ``weights/`` folder read (:class:`Weights`), or the reason it is refused; read again only when it changed."""
    key, signature = os.fspath(folder), _signature(folder)
    with _SCAN_LOCK:
        seen = _SCANNED.get(key)
    if seen is not None and seen[0] == signature:
        return seen[1]
    try:
        result: Weights | str = Weights.read(folder, folder.name)
    except Exception as err:  # noqa: BLE001 - any failure of one folder refuses that model only
        result = " ".join(str(err).split())[:300] or type(err).__name__
        log.warning("weights %s refused: %s", folder.name, result)
    with _SCAN_LOCK:
        _SCANNED[key] = (signature, result)
    return result


def scan_local_weights(weights_dir: str | os.PathLike | None = None) -> LocalWeights:
    """Read every weights folder under ``weights/`` (folders with config.json and model.safetensors), each once
    until its files change. A folder that cannot be read (too large, not UTF-8, nested too deeply, out of range,
    files that link outside it) is listed under ``refused`` with its reason, logged once; the others are served."""
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    out = LocalWeights()
    if not root.is_dir():
        return out
    for p in sorted(root.iterdir()):
        try:
            if not (p.is_dir() and _is_weights_dir(p)):
                continue
        except OSError:
            continue
        result = _scan_one(p)
        if isinstance(result, str):
            out.refused[p.name] = result
        elif result.segments_images:
            out.models[p.name] = result
        else:
            out.helpers[p.name] = result
    return out


def list_local_weights(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the segmentation models under ``weights/`` (folders with config.json and model.safetensors),
    without helper models such as refiners and without refused folders (:func:`scan_local_weights`)."""
    return list(scan_local_weights(weights_dir).models)


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``"owner/name"`` or ``"owner/name@revision"`` -> (repo id, revision or None); ``ValueError`` otherwise."""
    match = _HUB_SPEC.match(spec.strip())
    if not match or ".." in spec:
        raise ValueError(f"{spec!r} is not a Hub repo id of the form owner/name[@revision]")
    return match.group("repo"), match.group("rev")


def _read_config(folder: Path, source: str) -> dict[str, Any]:
    """``config.json`` of a weights folder, parsed and validated (:func:`medseg_core.weights.read_config`)."""
    return read_config(folder, source)


def _download_patterns(helper: str | None) -> list[str]:
    files = list(_DOWNLOAD_FILES)
    if helper:
        files += [f"{helper}/config.json", f"{helper}/model.safetensors"]
    return files


def _check_remote_size(repo_id: str, revision: str | None, patterns: list[str], cache_dir: Any) -> None:
    """Refuse a repo whose wanted files exceed :data:`MAX_DOWNLOAD_BYTES`, from the Hub's file metadata."""
    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    size = sum(s.size or 0 for s in info.siblings or [] if s.rfilename in patterns)
    if size > MAX_DOWNLOAD_BYTES:
        raise UnsafeWeightsError(f"{repo_id}: the weights are {size / 1e6:.0f} MB; the limit is "
                                 f"{MAX_DOWNLOAD_BYTES / 1e6:.0f} MB")


def _check_local_size(folder: Path, patterns: list[str], source: str) -> None:
    size = sum((folder / p).stat().st_size for p in patterns if (folder / p).is_file())
    if size > MAX_DOWNLOAD_BYTES:
        raise UnsafeWeightsError(f"{source}: the weights are {size / 1e6:.0f} MB; the limit is "
                                 f"{MAX_DOWNLOAD_BYTES / 1e6:.0f} MB")


def _fetch(repo_id: str, revision: str | None, cache_dir: Any, local_only: bool) -> Weights:
    """config.json first (validated), then only the files a weights folder needs, within the size cap."""
    config_path = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_only)
    source = repo_id if revision is None else f"{repo_id}@{revision}"
    config = read_config(Path(config_path).parent, source)
    patterns = _download_patterns(helper_folder(config, source))
    if not local_only:
        _check_remote_size(repo_id, revision, patterns, cache_dir)
    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir,
                                    local_files_only=local_only))
    _check_local_size(folder, patterns, source)
    if not _is_weights_dir(folder):
        raise WeightsNotFoundError(f"{source} holds no model.safetensors")
    return Weights.read(folder, source, config=config)  # the config read above: the same file, not opened again


def resolve_hub_weights(spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached folder of a Hub model ``owner/name[@revision]`` (:func:`resolve_hub`)."""
    return resolve_hub(spec, cache_dir=cache_dir).folder


def resolve_hub(spec: str, cache_dir: str | os.PathLike | None = None) -> Weights:
    """The :class:`Weights` of a Hub model ``owner/name[@revision]``: downloaded (config.json validated first, only
    :data:`_DOWNLOAD_FILES` and the helper sub-folder, at most :data:`MAX_DOWNLOAD_BYTES`), or the cached copy
    when the Hub is unreachable or ``HF_HUB_OFFLINE=1``. Never a local path."""
    try:
        repo_id, revision = parse_hub_spec(spec)
    except ValueError as err:
        raise WeightsNotFoundError(str(err)) from err
    try:
        return _fetch(repo_id, revision, cache_dir, local_only=False)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        if isinstance(err, WeightsNotFoundError):
            raise
        online_error = err
    try:
        # Offline or unreachable: fall back to what is already cached.
        local = _fetch(repo_id, revision, cache_dir, local_only=True)
        log.warning("the Hub is unreachable (%s); using the cached copy of %s", online_error, spec)
        return local
    except (LocalEntryNotFoundError, OSError) as err:
        if isinstance(err, WeightsNotFoundError):
            raise
        raise WeightsNotFoundError(
            f"cannot download {spec} from the Hugging Face Hub ({type(online_error).__name__}) and it is not in "
            "the local cache. Connect to the internet once, or copy the weights folder into weights/."
        ) from err


def resolve_weights(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder holding ``config.json`` + ``model.safetensors`` for a folder, a ``weights/`` name or a repo id
    (``owner/name[@revision]``), its ``config.json`` validated (:func:`resolve`; :class:`UnsafeWeightsError` names
    the bad field)."""
    return resolve(name_or_path, cache_dir=cache_dir).folder


def resolve(name_or_path: str | os.PathLike | Weights, cache_dir: str | os.PathLike | None = None) -> Weights:
    """The :class:`Weights` of a folder, a ``weights/`` name or a Hub repo id (``owner/name[@revision]``, see
    :func:`resolve_hub`): its ``config.json`` read once and validated (:class:`UnsafeWeightsError` names the bad
    field or file). A :class:`Weights` is returned as it is."""
    if isinstance(name_or_path, Weights):
        return name_or_path
    path = Path(name_or_path)
    if _is_weights_dir(path):
        return Weights.read(path, str(name_or_path))
    if _is_weights_dir(WEIGHTS_DIR / str(name_or_path)) and ".." not in Path(str(name_or_path)).parts:
        return Weights.read(WEIGHTS_DIR / str(name_or_path), str(name_or_path))
    repo_id = str(name_or_path)
    if path.exists() or not _HUB_SPEC.match(repo_id):
        local = list_local_weights()
        raise WeightsNotFoundError(
            f"{repo_id!r} is neither a folder with config.json and model.safetensors, nor a name in "
            f"{WEIGHTS_DIR} (available: {', '.join(local) or 'none'}), nor a Hub repo id of the form owner/name"
            + close_matches(repo_id, local, n=1)
        )
    return resolve_hub(repo_id, cache_dir=cache_dir)


def load_model(name_or_path: str | os.PathLike | Weights, map_location: str = "cpu",
               cache_dir: str | None = None) -> SegModel:
    """Rebuild any saved model from its folder, ``weights/`` name, Hub repo id or :class:`Weights`, in eval mode
    (``config.json`` read once)."""
    return resolve(name_or_path, cache_dir=cache_dir).load_model(map_location=map_location)


def recorded_postprocess(folder: str | os.PathLike | Weights) -> dict[str, Any]:
    """The post-processing recorded in a weights folder's ``config.json``: ``{"steps": [...], "refiner": ...}``.

    ``steps`` are names from ``medseg_core.postprocess`` (empty when none is recorded); ``refiner`` is where the
    ``refine`` step's model lives, resolved here: a sub-folder of the weights folder, else a ``weights/`` name as
    written (None when not recorded). Absolute paths, ``..``, repo ids and a sub-folder that is a link to somewhere
    else are refused (:class:`UnsafeWeightsError`): a helper model never comes from outside its weights folder.
    """
    weights = folder if isinstance(folder, Weights) else Weights.read(folder, Path(folder).name)
    return {"steps": list(weights.postprocess), "refiner": weights.refiner}


def _record_numbers(folder: str | os.PathLike, key: str, values: Sequence[float]) -> Path:
    """Write a list of numbers under ``key`` into a weights folder's ``config.json``, validated before it is
    written."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config[key] = [round(float(v), 4) for v in values]
    validate_model_config(config, Path(folder).name)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def record_thresholds(folder: str | os.PathLike, thresholds: Sequence[float]) -> Path:
    """Write per-class probability thresholds (chosen on a validation split by ``medseg-calibrate --what
    thresholds``) into a multi-label weights folder's ``config.json``; ``Segmenter.from_pretrained`` then uses
    them."""
    return _record_numbers(folder, "thresholds", thresholds)


def record_class_bias(folder: str | os.PathLike, bias: Sequence[float]) -> Path:
    """Write a multi-class model's per-class log-odds offsets (chosen on a validation split by
    ``medseg-calibrate --what class-bias``) into its ``config.json``; ``Segmenter.from_pretrained`` then uses them."""
    return _record_numbers(folder, "class_bias", bias)


def record_presence(folder: str | os.PathLike, rule: Mapping[str, Any]) -> Path:
    """Write the lesion-present rule (:class:`~medseg_core.presence.PresenceRule`'s fields, with ``chosen_on`` and
    ``specificity`` notes; chosen on validation splits by ``medseg-calibrate --what presence``) into a weights
    folder's ``config.json``, validated before it is written; ``Segmenter.from_pretrained`` then applies it."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    config["presence"] = dict(rule)
    validate_model_config(config, Path(folder).name)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


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
    extra = sorted({k for m in metrics.values() for k in m if k.startswith("class_dice")})
    keys += extra + [k for k in ("mdice",) if any(k in m for m in metrics.values())]
    rows = ["| split | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for split, m in metrics.items():
        rows.append(f"| {split} | " + " | ".join(f"{m[k]:.4f}" if k in m else "—" for k in keys) + " |")
    return "\n".join(rows)


def _labels_text(config: Mapping[str, Any]) -> str:
    from .labels import schema_from_config

    schema = schema_from_config(config)
    recorded = "" if config.get("task") else " (the default for weights without a recorded schema)"
    return (f"`{schema.task}`, classes {', '.join(f'`{n}`' for n in schema.class_names)}, masks stored as "
            f"`{schema.mask_encoding}`{recorded}")


def intended_use_markdown(config: Mapping[str, Any]) -> str:
    """The model card's "Intended use" section from ``config.json``'s ``modality`` and ``intended_use`` (an empty
    line when neither is recorded)."""
    if not config.get("modality") and not config.get("intended_use"):
        return ""
    lines = [f"- Modality: {config['modality']}." if config.get("modality") else "",
             f"- Intended use: {config['intended_use']}" if config.get("intended_use") else ""]
    return "\n## Intended use\n" + "\n".join(line for line in lines if line) + "\n" + (
        "- Research use only; not a medical device. Images from another modality or organ are outside what it "
        "was trained and measured on, and its output there means nothing.\n")


def write_model_card(
    folder: str | os.PathLike,
    *,
    name: str,
    config: Mapping[str, Any],
    data: str,
    recipe: str,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    notes: str = "",
    license: str = "apache-2.0",
    tags: Sequence[str] = ("polyp",),
) -> Path:
    """Write ``README.md`` for a weights folder: what the model is, the data and split, recipe, measured metrics.

    ``license`` is the Hub licence identifier of the weights (weights trained on non-commercial data, e.g. EDD2020's
    CC BY-NC-SA 4.0, carry ``cc-by-nc-sa-4.0``); ``tags`` are added to the card's Hub tags."""
    cls = get_model_class(config["arch"])
    measured = _metrics_table(metrics) if metrics else "Not measured yet: run `train/evaluate.py` and add it here."
    use = intended_use_markdown(config)
    text = f"""---
library_name: medseg
license: {license}
pipeline_tag: image-segmentation
tags: [{', '.join(['medical-imaging', 'image-segmentation', 'endoscopy', *tags])}]
---

# {name}

Architecture `{config['arch']}` ({cls.info.paper}), encoder `{config.get('encoder', '—')}`
(initialised from `{config.get('encoder_weights')}`), {config['num_classes']} output channel(s),
input {config['input_size']}×{config['input_size']}, normalisation mean {config['mean']} std {config['std']}.
Labels: {_labels_text(config)}.

Load it with `medseg_core.load_model("{name}")` or `medseg_core.Segmenter.from_pretrained(...)`.
{use}
## Data
{data}

## Training recipe
{recipe}

## Measured metrics
Per-image metrics at the original image resolution, threshold 0.5 unless a row names per-class thresholds,
averaged over images (`train/evaluate.py`; HD95 in pixels; `class_dice_*` over all pixels of the split):

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
