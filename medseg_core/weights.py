"""A weights folder, read once: :class:`Weights` holds its validated ``config.json``, label schema, recorded steps
(post-processing, thresholds, class bias, TTA factors, the lesion-present rule) and file paths.

``Segmenter.from_pretrained``, :mod:`medseg_core.hub` (``load_model``, ``recorded_postprocess``, the ``weights/``
listing), the app's model list and the commands all take one of these, so a load opens ``config.json`` once:

    weights = Weights.read("weights/unet_lite2.polyp")
    weights.schema, weights.postprocess, weights.presence      # what was recorded with the weights
    model = weights.load_model()                                # built from the config already read

Reading a folder is where everything a weights folder could do wrong is caught: a ``config.json`` too large, not
UTF-8, not JSON, nested too deeply, out of range (:func:`medseg_core.safety.validate_model_config`), files or a
helper folder that are links to somewhere else (paths are resolved with ``realpath`` before the check). Each is
an :class:`~medseg_core.safety.UnsafeWeightsError` naming the model and the reason, so one bad folder is one
refused model.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .labels import LabelSchema, schema_from_config
from .models import SegModel, get_model_class
from .postprocess import POSTPROCESSING_STEPS
from .presence import PresenceRule
from .safety import UnsafeWeightsError, confined_path, helper_folder, validate_model_config

__all__ = ["CONFIG_NAME", "MAX_CONFIG_BYTES", "ONNX_NAME", "SAFETENSORS_NAME", "Weights", "confinement_root",
           "read_config"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
#: The exported network beside the weights (``medseg_core.backends.ONNX_FILENAME``).
ONNX_NAME = "model.onnx"
#: Largest ``config.json`` read (a real one is about 1 KB).
MAX_CONFIG_BYTES = 1_000_000


def confinement_root(folder: str | os.PathLike) -> Path:
    """What the files of a weights folder must resolve inside: the folder itself; for a Hugging Face cache
    snapshot (``.../models--owner--name/snapshots/<revision>``, whose files are links into ``../../blobs``), the
    repo's cache folder."""
    real = Path(os.path.realpath(folder))
    if real.parent.name == "snapshots" and (real.parents[1] / "blobs").is_dir():
        return real.parents[1]
    return real


def _reason(err: BaseException) -> str:
    """An unexpected error while reading a weights folder, as a short reason without server paths."""
    if isinstance(err, RecursionError):
        return "config.json is nested too deeply"
    if isinstance(err, OSError):
        return f"a file cannot be read ({err.strerror or type(err).__name__})"
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def read_config(folder: str | os.PathLike, source: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """A weights folder's ``config.json``, opened once: at most :data:`MAX_CONFIG_BYTES`, UTF-8 JSON, inside
    ``root`` (by default :func:`confinement_root`), and validated (:func:`~medseg_core.safety.validate_model_config`).
    Raises :class:`~medseg_core.safety.UnsafeWeightsError` with the reason for anything else."""
    folder = Path(folder)
    try:
        path = confined_path(folder / CONFIG_NAME, root if root is not None else confinement_root(folder), source,
                             CONFIG_NAME)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_CONFIG_BYTES:
                raise UnsafeWeightsError(f"{source}: config.json is larger than {MAX_CONFIG_BYTES // 1_000_000} MB")
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise UnsafeWeightsError(f"{source}: config.json is larger than {MAX_CONFIG_BYTES // 1_000_000} MB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UnsafeWeightsError(f"{source}: config.json is not UTF-8 text ({err.reason} at byte "
                                     f"{err.start})") from err
        try:
            config = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnsafeWeightsError(f"{source}: config.json is not valid JSON ({err.msg}, line {err.lineno} "
                                     f"column {err.colno})") from err
        return validate_model_config(config, source)
    except UnsafeWeightsError:
        raise
    except (RecursionError, OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise UnsafeWeightsError(f"{source}: {_reason(err)}") from err


@dataclass(frozen=True, eq=False)
class Weights:
    """One weights folder, read and validated once (:meth:`read`).

    Attributes:
        source: how messages name it (the ``weights/`` name, the path given, or the Hub repo id).
        folder: the folder (as given; its files were checked to resolve inside ``root``).
        root: the resolved folder its files must stay inside (a Hub cache snapshot: the repo's cache folder).
        config: the validated ``config.json`` (read-only).
        schema: the label schema (:func:`medseg_core.labels.schema_from_config`).
        postprocess: the recorded post-processing step names (empty when none).
        refiner: the ``refine`` step's model: the path of a sub-folder of ``folder``, or a ``weights/`` name as
            recorded; None when none is recorded.
        thresholds, class_bias, tta_scales: recorded per-class thresholds, class bias and TTA factors, or None.
        presence: the recorded lesion-present rule, or None.
        onnx_path: ``model.onnx`` beside the weights, when there is one.
    """

    source: str
    folder: Path
    root: Path
    config: Mapping[str, Any]
    schema: LabelSchema
    postprocess: tuple[str, ...]
    refiner: str | None
    thresholds: list[float] | None
    class_bias: list[float] | None
    tta_scales: list[float] | None
    presence: PresenceRule | None
    onnx_path: Path | None

    @classmethod
    def read(cls, folder: str | os.PathLike, source: str | None = None, root: str | os.PathLike | None = None,
             config: Mapping[str, Any] | None = None) -> Weights:
        """Read a weights folder: its ``config.json`` once (or ``config``, already read from the same folder, e.g.
        by a Hub download), validated, and its recorded steps and files checked. Raises
        :class:`~medseg_core.safety.UnsafeWeightsError` naming ``source`` and the reason for anything wrong."""
        folder = Path(folder)
        source = source if source is not None else os.fspath(folder)
        try:
            base = Path(os.path.realpath(root)) if root is not None else confinement_root(folder)
            config = read_config(folder, source, base) if config is None else validate_model_config(
                json.loads(json.dumps(config)), source)
            return cls._build(folder, source, base, config)
        except UnsafeWeightsError:
            raise
        except (RecursionError, OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise UnsafeWeightsError(f"{source}: {_reason(err)}") from err

    @classmethod
    def _build(cls, folder: Path, source: str, root: Path, config: dict[str, Any]) -> Weights:
        steps = tuple(config.get("postprocess") or ())
        unknown = [s for s in steps if s not in POSTPROCESSING_STEPS]
        if unknown:
            raise UnsafeWeightsError(f"{source}: config.json records unknown post-processing steps {unknown}; known: "
                                     f"{', '.join(sorted(POSTPROCESSING_STEPS))}")
        confined_path(folder / SAFETENSORS_NAME, root, source, SAFETENSORS_NAME)
        onnx = folder / ONNX_NAME
        if os.path.lexists(onnx):
            confined_path(onnx, root, source, ONNX_NAME)
        try:
            schema = schema_from_config(config)
            presence = PresenceRule.from_config(config["presence"]) if config.get("presence") is not None else None
        except ValueError as err:
            raise UnsafeWeightsError(f"{source}: config.json {err}") from err
        return cls(source=source, folder=folder, root=root, config=MappingProxyType(config), schema=schema,
                   postprocess=steps, refiner=cls._refiner(folder, config, source), thresholds=config.get("thresholds"),
                   class_bias=config.get("class_bias"), tta_scales=config.get("tta_scales"), presence=presence,
                   onnx_path=onnx if onnx.is_file() else None)

    @staticmethod
    def _refiner(folder: Path, config: Mapping[str, Any], source: str) -> str | None:
        """The recorded refiner: a sub-folder that resolves inside the weights folder (a link to elsewhere is
        refused), else a ``weights/`` name as written."""
        name = helper_folder(config, source)
        if name is None:
            return None
        sub = folder / name
        if not os.path.lexists(sub):
            return name
        confined_path(sub, folder, source, f"the refiner folder {name!r}")
        return os.fspath(sub) if (sub / CONFIG_NAME).is_file() and (sub / SAFETENSORS_NAME).is_file() else name

    @property
    def arch(self) -> str:
        return str(self.config["arch"])

    @property
    def model_class(self) -> type[SegModel]:
        return get_model_class(self.arch)

    @property
    def segments_images(self) -> bool:
        """False for helper models (the ``refine`` step's refiner), which segment nothing on their own."""
        return self.model_class.info.segments_images

    @property
    def safetensors_path(self) -> Path:
        return self.folder / SAFETENSORS_NAME

    @property
    def purpose(self) -> dict[str, str]:
        """``modality``, ``intended_use`` and ``task``, those the config records (validated plain text)."""
        return {k: self.config[k] for k in ("modality", "intended_use", "task") if isinstance(self.config.get(k), str)}

    def load_model(self, map_location: str = "cpu") -> SegModel:
        """The model, built from the config already read (``config.json`` is not opened again) with its
        ``model.safetensors`` loaded strictly, in eval mode."""
        confined_path(self.safetensors_path, self.root, self.source, SAFETENSORS_NAME)
        cls = self.model_class
        kwargs = {}
        for name, param in cls._hub_mixin_init_parameters.items():
            if name in self.config:
                value = json.loads(json.dumps(self.config[name]))
                kwargs[name] = (value if param.annotation is inspect.Parameter.empty
                                else cls._decode_arg(param.annotation, value))
        model = cls._from_pretrained(model_id=os.fspath(self.folder), revision=None, cache_dir=None,
                                     force_download=False, local_files_only=True, token=None,
                                     map_location=map_location, **kwargs)
        if getattr(model, "_hub_mixin_config", None) in (None, {}):
            model._hub_mixin_config = json.loads(json.dumps(dict(self.config)))
        return model

    def refiner_weights(self) -> Weights | None:
        """The refiner's :class:`Weights`: a sub-folder read with this folder's confinement, or a ``weights/``
        name resolved by :func:`medseg_core.hub.resolve`; None when none is recorded."""
        if self.refiner is None:
            return None
        if Path(self.refiner).parent == self.folder:
            confined_path(self.refiner, self.folder, self.source, "the refiner folder")
            return Weights.read(self.refiner, f"{self.source}/{Path(self.refiner).name}", root=self.root)
        from .hub import resolve

        return resolve(self.refiner)

    def load_refiner(self, map_location: str = "cpu") -> SegModel:
        """The ``refine`` step's network (``ValueError`` when none is recorded)."""
        weights = self.refiner_weights()
        if weights is None:
            raise ValueError(f"the weights of {self.source} name no refiner")
        return weights.load_model(map_location)
