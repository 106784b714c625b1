"""Limits and checks at the trust boundary: weights configs, image headers, zip archives, private temporary files.

Everything a user (or a Hub repo) hands the app is checked here *before* it is decoded or built:

* :func:`validate_model_config` — a weights folder's ``config.json`` against the architecture's constructor
  (known keys, JSON types, ranges such as ``input_size`` <= 1024 and ``num_classes`` <= 32, ``mean``/``std`` one
  number per channel with ``std`` > 0) and a cost budget over the fields together (:func:`config_cost`: layer
  widths x network side squared, TTA sizes included); :func:`helper_folder` and :func:`confined_path` keep a helper
  model (the refiner) and every file inside its weights folder, after ``realpath``.
* :func:`image_size_from_header` / :func:`check_image_size` — pixel count and side limits from the file header.
* :func:`extract_zip` — streamed extraction with per-member, per-request and per-server size caps and a
  compression-ratio cap; a member that cannot be read becomes a :class:`RejectedInput` (one CSV row), not a failure.
* :func:`private_dir` / :func:`make_private` / :func:`remove_older_than` — 0700 folders, 0600 files, short lives.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import PIL.Image

from .cli import InputRefused
from .io import IMAGE_EXTENSIONS

__all__ = [
    "EXTRA_CONFIG_KEYS",
    "MAX_ACTIVATIONS",
    "MAX_CLASSES",
    "MAX_DISPLAY_SIDE",
    "MAX_IMAGE_SIDE",
    "MAX_INPUT_SIZE",
    "MAX_PARAMETERS",
    "TTA_SCALE_RANGE",
    "ExtractionBudget",
    "ImageTooLargeError",
    "RejectedInput",
    "UnsafeWeightsError",
    "ZipLimits",
    "check_image_size",
    "config_cost",
    "confined_path",
    "downscale_for_display",
    "extract_zip",
    "helper_folder",
    "image_size_from_header",
    "make_private",
    "private_dir",
    "remove_older_than",
    "validate_model_config",
]

log = logging.getLogger(__name__)

#: Largest model input side a config may ask for (memory grows with its square).
MAX_INPUT_SIZE = 1024
#: Most classes a config may declare.
MAX_CLASSES = 32
#: Largest side of an image the app accepts: WebP, the browser-facing encoding, stops at 16383 px.
MAX_IMAGE_SIDE = 16383
#: Largest side of an image the page displays; files written for download keep their full size.
MAX_DISPLAY_SIDE = 4096

# ---- weights configs -------------------------------------------------------------------------------------------


class UnsafeWeightsError(InputRefused):
    """A weights folder (or Hub repo) that is refused: a config field out of range, a helper path that leaves the
    folder, files above the size cap. The message names the field or file, never a server path."""


#: Keys a config may hold besides the architecture's constructor arguments, with their JSON types.
EXTRA_CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "arch": (str,),
    "postprocess": (list,),
    "refiner": (str,),
    "task": (str,),
    "class_names": (list,),
    "colours": (list,),
    "colors": (list,),
    "mask_encoding": (str,),
    "thresholds": (list,),
    "tta_scales": (list,),
    "class_bias": (list,),
    "presence": (dict,),
    "modality": (str,),
    "intended_use": (str,),
}
#: What a model is for, shown beside its name and its results (``config.json``'s ``modality`` and ``intended_use``):
#: plain text only, since the page renders it as Markdown (no markup, links or HTML from a Hub repo's config).
_MODALITY = re.compile(r"[a-z][a-z -]{0,39}")
_INTENDED_USE = re.compile(r"[\w][\w .,;:()'%/+-]{0,159}")
#: Largest magnitude of a recorded ``class_bias`` entry (a log-odds offset).
MAX_CLASS_BIAS = 10.0
#: Factors of the input size that multi-scale TTA (``tta_scales``) may use.
TTA_SCALE_RANGE = (0.5, 2.0)
_NAME = re.compile(r"^[A-Za-z0-9_][\w.+-]{0,127}$")
#: Ranges of well-known integer arguments; any other integer must lie in [0, _MAX_INT].
_INT_RANGES = {"input_size": (16, MAX_INPUT_SIZE), "num_classes": (1, MAX_CLASSES), "in_channels": (1, 16)}
_MAX_INT = 4096
_MAX_LIST = 16


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a constructor annotation written as a string (``int``, ``Sequence[float] | None``)."""
    options = [a.strip() for a in annotation.split("|")]
    for option in options:
        if option == "None" and value is None:
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option == "str" and isinstance(value, str):
            return True
        inner = re.fullmatch(r"(?:Sequence|list|tuple)\[(\w+)\]", option)
        if inner and isinstance(value, list) and all(_type_ok(v, inner.group(1)) for v in value):
            return True
    return False


def _check_value(key: str, value: Any, source: str) -> None:
    """Ranges: bounded integers, finite numbers, short lists, plain names."""
    def bad(why: str) -> UnsafeWeightsError:
        return UnsafeWeightsError(f"{source}: config.json field {key!r} = {str(value)[:80]} {why}")

    items = value if isinstance(value, list) else [value]
    if len(items) > _MAX_LIST:
        raise bad(f"has {len(items)} items; at most {_MAX_LIST} are allowed")
    for item in items:
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            lo, hi = _INT_RANGES.get(key, (0, _MAX_INT))
            if not lo <= item <= hi:
                raise bad(f"is out of range: it must be an integer from {lo} to {hi}")
        elif isinstance(item, float):
            if not math.isfinite(item) or abs(item) > 1e6:
                raise bad("is not a finite number")
        if key == "std" and isinstance(item, (int, float)) and item <= 0:
            raise bad("must be positive")
        elif isinstance(item, str) and not _NAME.match(item):
            raise bad("is not a plain name (letters, digits, '_', '.', '-', '+')")


def _check_presence(value: dict[str, Any], source: str) -> None:
    """The recorded lesion-present rule: the fields of :class:`~medseg_core.presence.PresenceRule`, plus short notes
    (``chosen_on``: split names, ``specificity``: the target it was chosen for)."""
    from .presence import PresenceRule

    notes = {"chosen_on": list, "specificity": (int, float)}
    for k, v in value.items():
        if k in ("score", "threshold", "min_area"):
            continue
        if k not in notes or not isinstance(v, notes[k]) or isinstance(v, bool):
            raise UnsafeWeightsError(f"{source}: config.json field 'presence' has an unknown or malformed entry {k!r}")
        _check_value(f"presence.{k}", v, source)
    try:
        PresenceRule.from_config(value)
    except ValueError as err:
        raise UnsafeWeightsError(f"{source}: config.json field {err}") from err


def validate_model_config(config: Any, source: str = "the weights") -> dict[str, Any]:
    """Check a ``config.json`` before any model is built; return it unchanged, or raise :class:`UnsafeWeightsError`.

    Known keys are the architecture's constructor arguments (``cls._hub_mixin_init_parameters``) plus
    :data:`EXTRA_CONFIG_KEYS`; values must have the annotated JSON type and lie in range (``input_size`` 16-1024,
    ``num_classes`` 1-32, other integers 0-4096, lists of at most 16 items, finite numbers, plain names).
    ``source`` names the model in messages (a weights name or a repo id, not a server path).
    """
    from .models import get_model_class, list_models

    if not isinstance(config, dict):
        raise UnsafeWeightsError(f"{source}: config.json must hold a JSON object, not {type(config).__name__}")
    arch = config.get("arch")
    if not isinstance(arch, str) or arch not in list_models():
        raise UnsafeWeightsError(f"{source}: config.json field 'arch' = {str(arch)[:40]!r} is not a known "
                                 "architecture")
    params = {k: v for k, v in get_model_class(arch)._hub_mixin_init_parameters.items()
              if k not in ("self", "args", "kwargs")}
    for key, value in config.items():
        if key in params:
            annotation = params[key].annotation
            if isinstance(annotation, str) and not _type_ok(value, annotation):
                raise UnsafeWeightsError(f"{source}: config.json field {key!r} = {str(value)[:80]} is not of type "
                                         f"{annotation}")
        elif key in EXTRA_CONFIG_KEYS:
            if not isinstance(value, EXTRA_CONFIG_KEYS[key]):
                raise UnsafeWeightsError(f"{source}: config.json field {key!r} must be a "
                                         f"{EXTRA_CONFIG_KEYS[key][0].__name__}")
        else:
            raise UnsafeWeightsError(f"{source}: config.json has unknown field {key!r} (not an argument of "
                                     f"{arch!r} nor one of {', '.join(sorted(EXTRA_CONFIG_KEYS))})")
        if key in ("refiner", "class_names", "colours", "colors"):
            continue  # checked by helper_folder / the label schema
        if key == "presence":
            _check_presence(value, source)
            continue
        if key == "modality" and not _MODALITY.fullmatch(value):
            raise UnsafeWeightsError(f"{source}: config.json field 'modality' = {value[:80]!r} must be a lower-case "
                                     "word or two, e.g. 'colonoscopy' (at most 40 characters)")
        if key == "intended_use" and not _INTENDED_USE.fullmatch(value):
            raise UnsafeWeightsError(f"{source}: config.json field 'intended_use' = {value[:80]!r} must be one "
                                     "short sentence of plain text (at most 160 characters; letters, digits, spaces "
                                     "and . , ; : ( ) ' % / + -)")
        if key in ("modality", "intended_use"):
            continue
        if key == "thresholds" and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                                           for v in value):
            raise UnsafeWeightsError(f"{source}: config.json field 'thresholds' = {str(value)[:80]} must list "
                                     "numbers from 0 to 1")
        if key == "tta_scales" and not (0 < len(value) <= 8 and all(isinstance(v, (int, float)) and not isinstance(
                v, bool) and TTA_SCALE_RANGE[0] <= v <= TTA_SCALE_RANGE[1] for v in value)):
            raise UnsafeWeightsError(f"{source}: config.json field 'tta_scales' = {str(value)[:80]} must list one "
                                     "to eight factors from 0.5 to 2")
        if key == "class_bias" and not (0 < len(value) <= MAX_CLASSES and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_CLASS_BIAS for v in value)):
            raise UnsafeWeightsError(f"{source}: config.json field 'class_bias' = {str(value)[:80]} must list one "
                                     f"number per class, each from -{MAX_CLASS_BIAS:g} to {MAX_CLASS_BIAS:g}")
        _check_value(key, value, source)
    _check_normalisation(config, params, source)
    _check_cost(config, source)
    return config


def _check_normalisation(config: Mapping[str, Any], params: Mapping[str, Any], source: str) -> None:
    """``mean`` and ``std``: one number per RGB channel (3) or per input channel (``in_channels``), the same length
    (integers are numbers too: ``std`` [0, 0, 0] is as refused as [0.0, 0.0, 0.0])."""
    in_channels = config.get("in_channels", getattr(params.get("in_channels"), "default", 3))
    lengths = {3} | ({in_channels} if isinstance(in_channels, int) and not isinstance(in_channels, bool) else set())
    for key in ("mean", "std"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) not in lengths or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UnsafeWeightsError(f"{source}: config.json field {key!r} = {str(value)[:80]} must list one number "
                                     f"per channel ({' or '.join(map(str, sorted(lengths)))} numbers)")
    if isinstance(config.get("mean"), list) and isinstance(config.get("std"), list) \
            and len(config["mean"]) != len(config["std"]):
        raise UnsafeWeightsError(f"{source}: config.json fields 'mean' and 'std' must have the same length "
                                 f"({len(config['mean'])} and {len(config['std'])})")


#: Most activations one network pass may be asked to hold: the widest layer's channels times the largest input side
#: squared (the input side times the largest TTA factor). 2**28 float32 values are 1 GiB; the shipped models need
#: about 3 % of it (256 channels at 352 px).
MAX_ACTIVATIONS = 2**28
#: Most weights a config may ask the network's widest layers for, estimated as 9 x channels**2 (a 3x3 convolution
#: from and to each listed width): 2**26 float32 weights are 256 MiB, about 80 times the shipped decoders'.
MAX_PARAMETERS = 2**26


def _widths(config: Mapping[str, Any]) -> list[int]:
    """The layer widths a config lists (``decoder_channels``, ``widths``, ``aspp_channels``, ...; not
    ``in_channels``, the input's)."""
    out = []
    for key, value in config.items():
        if key == "in_channels" or not (key.endswith("channels") or key in ("widths", "channels")):
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool):
                out.append(v)
    return out


def config_cost(config: Mapping[str, Any]) -> dict[str, int]:
    """The estimated cost of running a config: ``activations`` (widest layer x largest network side squared, over
    the input size and the recorded TTA factors) and ``parameters`` (9 x the sum of each listed width squared)."""
    widths = _widths(config) or [1]
    size = config.get("input_size", 0)
    scales = config.get("tta_scales") or [1.0]
    side = max(round(size * f / 32) * 32 if f != 1.0 else size for f in scales) if isinstance(size, int) else 0
    return {"activations": max(widths) * side * side, "parameters": 9 * sum(w * w for w in widths), "side": side}


def _check_cost(config: Mapping[str, Any], source: str) -> None:
    """Refuse a config whose allowed fields add up to a network too costly to run: a TTA size above
    :data:`MAX_INPUT_SIZE`, more than :data:`MAX_ACTIVATIONS` or :data:`MAX_PARAMETERS`; each field in range is not
    enough."""
    cost = config_cost(config)
    if cost["side"] > MAX_INPUT_SIZE:
        raise UnsafeWeightsError(
            f"{source}: config.json field 'tta_scales' = {str(config.get('tta_scales'))[:80]} takes the network to "
            f"{cost['side']} px (input_size {config.get('input_size')}); the largest network input is "
            f"{MAX_INPUT_SIZE} px")
    if cost["activations"] > MAX_ACTIVATIONS:
        raise UnsafeWeightsError(
            f"{source}: config.json asks for too costly a network: {max(_widths(config) or [1])} channels at "
            f"{cost['side']} px (input_size {config.get('input_size')}, tta_scales {config.get('tta_scales')}) is "
            f"{cost['activations'] / 1e6:.0f} M activations per pass; the limit is {MAX_ACTIVATIONS / 1e6:.0f} M")
    if cost["parameters"] > MAX_PARAMETERS:
        raise UnsafeWeightsError(
            f"{source}: config.json asks for too large a network: layer widths {_widths(config)[:8]} need about "
            f"{cost['parameters'] / 1e6:.0f} M weights; the limit is {MAX_PARAMETERS / 1e6:.0f} M")


def helper_folder(config: Mapping[str, Any], source: str = "the weights") -> str | None:
    """The helper model's sub-folder named by ``config["refiner"]``, checked to stay inside the weights folder.

    Returns a relative POSIX path of one plain folder name, or None when the config names no helper. Absolute
    paths, ``..``, nested paths and back-slashes are refused with :class:`UnsafeWeightsError`.
    """
    name = config.get("refiner")
    if name is None:
        return None
    if not isinstance(name, str) or "\\" in name or PurePosixPath(name).is_absolute() or ".." in name.split("/") \
            or len(PurePosixPath(name).parts) != 1 or not _NAME.match(name):
        raise UnsafeWeightsError(f"{source}: config.json field 'refiner' = {str(name)[:80]!r} must name a "
                                 "sub-folder of the weights folder (no absolute path, no '..')")
    return name


def confined_path(path: str | os.PathLike, root: str | os.PathLike, source: str, what: str) -> Path:
    """``path`` resolved (``realpath``: every symbolic link followed) and refused with :class:`UnsafeWeightsError`
    unless it stays inside ``root`` (resolved too): a file or helper folder of a weights folder that is a link to
    somewhere else is never read. ``what`` names it in the message (never a server path)."""
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if not real.is_relative_to(base):
        raise UnsafeWeightsError(f"{source}: {what} leaves the weights folder (it is a link to somewhere else)")
    return real


# ---- image headers -------------------------------------------------------------------------------------------------


class ImageTooLargeError(ValueError):
    """An image above a pixel or side limit; the message gives its size and the limit."""


def image_size_from_header(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels. Raises
    :class:`ImageTooLargeError` for a decompression bomb (Pillow refuses to open it) and ``ValueError`` when the
    file is not an image Pillow can identify."""
    try:
        with PIL.Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except PIL.Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f" ({int(pixels.group(1)) / 1e6:.0f} MP)" if pixels else ""
        raise ImageTooLargeError(f"{Path(path).name} is too large to open safely{size}") from err
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{Path(path).name} is not an image file we can read") from err


def check_image_size(width: int, height: int, max_pixels: int, what: str, max_side: int = MAX_IMAGE_SIDE) -> None:
    """``ValueError`` naming ``what`` when an image has more than ``max_pixels`` pixels or a side above ``max_side``."""
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{what} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
                                 f"{max_pixels / 1e6:.0f} MP. Downscale it and try again.")
    if max(width, height) > max_side:
        raise ImageTooLargeError(f"{what} is {width}x{height} pixels; the longest side may be at most {max_side} "
                                 "pixels. Downscale it and try again.")


def downscale_for_display(image: np.ndarray | None, max_side: int = MAX_DISPLAY_SIDE) -> np.ndarray | None:
    """The image shrunk (area interpolation) so its longer side is at most ``max_side``; small images unchanged."""
    if image is None or max(image.shape[:2]) <= max_side:
        return image
    h, w = image.shape[:2]
    f = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


# ---- zip archives --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipLimits:
    """Caps on what one zip may unpack to. Sizes are counted while streaming, never taken from the zip's header."""

    max_members: int = 1000
    max_member_bytes: int = 256_000_000
    max_total_bytes: int = 1_000_000_000
    max_ratio: float = 200.0


class RejectedInput(os.PathLike):
    """A batch input that could not be taken (e.g. a zip member with a bad CRC): its name and the reason, so the
    batch writes a row saying why instead of failing. ``os.fspath`` gives the name."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def __fspath__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"RejectedInput({self.name!r}, {self.reason!r})"


class ExtractionBudget:
    """Bytes unpacked by requests still running, across one server; ``reserve`` refuses beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self._lock = limit, 0, threading.Lock()

    def reserve(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise ValueError(f"the server is unpacking other uploads ({self.used / 1e6:.0f} MB); try again in a "
                                 "minute or upload fewer files")
            self.used += n

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)

    @contextlib.contextmanager
    def request(self) -> Iterator[ExtractionBudget]:
        """A budget for one request: what it reserves counts here too, and is given back when the block ends."""
        child = _RequestBudget(self)
        try:
            yield child
        finally:
            self.release(child.used)


class _RequestBudget(ExtractionBudget):
    def __init__(self, parent: ExtractionBudget) -> None:
        super().__init__(parent.limit)
        self.parent = parent

    def reserve(self, n: int) -> None:
        self.parent.reserve(n)
        with self._lock:
            self.used += n


_CHUNK = 1 << 20


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, limits: ZipLimits,
                 left: int) -> int:
    """Stream one member to ``dest``; returns its size. ``ValueError`` (caps) or ``zipfile.BadZipFile`` (CRC)."""
    written, compressed = 0, max(1, info.compress_size)
    cap = min(limits.max_member_bytes, left)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with archive.open(info) as src, os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > limits.max_member_bytes:
                raise ValueError(f"unpacks to more than {limits.max_member_bytes // 1_000_000} MB (the limit per "
                                 "file)")
            if written > cap:
                raise ValueError(f"the archive unpacks to more than {limits.max_total_bytes // 1_000_000} MB "
                                 "(the limit per upload)")
            if written > 1_000_000 and written / compressed > limits.max_ratio:
                raise ValueError(f"is compressed more than {limits.max_ratio:.0f}:1, which no image is; refused as "
                                 "a zip bomb")
            out.write(chunk)
    return written


def extract_zip(path: str | os.PathLike, target: str | os.PathLike, limits: ZipLimits = ZipLimits(),
                image_extensions: tuple[str, ...] | frozenset[str] = IMAGE_EXTENSIONS,
                budget: ExtractionBudget | None = None, used: int = 0) -> tuple[list[Path | RejectedInput], int]:
    """Stream a zip's image members into ``target`` (0700), flattened to base names; returns (paths, bytes written).

    Members above a cap, compressed beyond ``max_ratio`` or failing their CRC come back as :class:`RejectedInput`
    (the file is removed); going over the per-upload total (``used`` counts what earlier archives of the same
    request unpacked) or the server's ``budget`` stops the archive with ``ValueError``.
    """
    path, target = Path(path), Path(target)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path.name} is not a readable zip archive") from err
    out: list[Path | RejectedInput] = []
    total = 0
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()
                   and not PurePosixPath(m.filename).name.startswith(".")
                   and PurePosixPath(m.filename).suffix.lower() in image_extensions]
        if len(members) > limits.max_members:
            raise ValueError(f"{path.name} holds {len(members)} images; the limit is {limits.max_members}")
        private_dir(target)
        names: set[str] = set()
        for m in members:
            name = PurePosixPath(m.filename.replace("\\", "/")).name
            stem, suffix, n = PurePosixPath(name).stem, PurePosixPath(name).suffix, 1
            while name in names:  # the same base name in two archive folders
                name, n = f"{stem}_{n}{suffix}", n + 1
            names.add(name)
            dest = target / name
            left = limits.max_total_bytes - used - total
            try:
                size = _copy_member(archive, m, dest, limits, left)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
                dest.unlink(missing_ok=True)
                out.append(RejectedInput(name, f"{name} in {path.name} could not be unpacked (damaged archive "
                                               f"member: {err})"))
                continue
            except ValueError as err:
                dest.unlink(missing_ok=True)
                if "per upload" in str(err):
                    raise ValueError(f"{path.name}: {err}") from err
                out.append(RejectedInput(name, f"{name} in {path.name} {err}"))
                continue
            if budget is not None:
                try:
                    budget.reserve(size)
                except ValueError:
                    dest.unlink(missing_ok=True)
                    raise
            total += size
            out.append(dest)
    return out, total


# ---- private temporary files ---------------------------------------------------------------------------------------


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) as a folder only its owner can read, write or list (0700)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def make_private(root: str | os.PathLike) -> None:
    """Folders under ``root`` 0700, files 0600 (files written with the default umask are world-readable)."""
    root = Path(root)
    if root.is_file():
        os.chmod(root, 0o600)
        return
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o700)
        for f in files:
            p = os.path.join(folder, f)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)


def remove_older_than(root: str | os.PathLike, seconds: float) -> int:
    """Remove entries of ``root`` last modified more than ``seconds`` ago; returns how many."""
    root, now, n = Path(root), time.time(), 0
    if not root.is_dir():
        return 0
    for old in root.iterdir():
        try:
            if now - old.lstat().st_mtime > seconds:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
                n += 1
        except OSError:
            continue
    return n
