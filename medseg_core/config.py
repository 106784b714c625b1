"""Training recipes: YAML files with ``model``, ``data`` and ``train`` sections, overridden by ``--section.key value``.

A recipe states only what differs from another with ``base: other.yaml`` (relative to its own folder): the base is
read first and the recipe's keys are deep-merged over it; bases chain, and a cycle is an error.

Keys are strict: a key that no section knows (``--train.epoch 2``) is an error that names the close matches,
never silently ignored. ``model`` keys are checked against the architecture's constructor.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .labels import LabelSchema, schema_from_config
from .models import get_model_class
from .safety import _NAME, MAX_IMAGE_SIDE, MAX_INPUT_SIZE, UnsafeWeightsError, validate_model_config

__all__ = ["DATA_LAYOUTS", "DEFAULTS", "DataLayoutError", "MAX_BATCH_SIZE", "MAX_EPOCHS", "OPTIMIZERS", "PRECISIONS",
           "SCHEDULES", "RecipeError", "UWMGI_SPLITS", "load_config", "recipe_schema", "validate_config"]

#: Optimisers and learning-rate schedules a recipe can name (``train.optimizer`` / ``train.schedule``).
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "exponential", "constant")
#: How ``data.root`` is laid out (``data.layout``): ``splits``, the project's ``<root>/splits/<name>.txt`` lists of
#: ``<dataset folder>/<image id>``; ``uwmgi_competition``, the UW-Madison GI Tract competition download as published
#: (``train.csv`` beside ``train/case<N>/case<N>_day<D>/scans/*.png``), split by case (medseg_core.data).
DATA_LAYOUTS = ("splits", "uwmgi_competition")
#: The split names of the ``uwmgi_competition`` layout: its cases divided by ``data.val_fraction``, or all of them.
UWMGI_SPLITS = ("train", "val", "all")
#: ``train.precision`` values (``auto``: bf16 where the hardware computes it, else fp32; ``no``: fp32).
PRECISIONS = ("auto", "no", "fp16", "bf16")
#: Bounds on a recipe's run. The model section has the weights' bounds (medseg_core.safety.validate_model_config:
#: ``model.input_size`` at most :data:`~medseg_core.safety.MAX_INPUT_SIZE`, since the app refuses larger weights).
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 512
MAX_NUM_WORKERS = 64
#: Largest magnitude of a recipe number, as for a weights config's numbers (medseg_core.safety).
_MAX_NUMBER = 1e6
#: Model inputs are divided by 2 five times (every encoder stage halves the side): sides are multiples of 32.
INPUT_MULTIPLE = 32

DEFAULTS: dict[str, Any] = {
    "name": "model",
    "model": {"arch": "unet", "num_classes": 1},
    # What the classes are (medseg_core.labels): written into the weights' config.json. Unset: binary
    # (background, lesion) for one or two outputs, else classes named "class 1", ...
    "labels": {"task": None, "class_names": None, "colours": None},
    "data": {
        "root": "../shared/data",
        "train_split": "polyp-train",
        # One split, or a list of splits read together (e.g. [polyp-val, polyp-negative-val]: the model is selected
        # on frames with a polyp and on frames without one).
        "val_split": "polyp-val",
        # Extra training splits and their share of every batch, e.g. {polyp-negative-train: 0.25}: a quarter of each
        # batch drawn from lesion-free frames (medseg_core.data.MixedBatchSampler); None: the train split alone.
        "mix_splits": None,
        "mask_encoding": "binary",
        "cache_max_side": None,
        # splits: root holds splits/<name>.txt; uwmgi_competition: root is the UW-Madison GI Tract competition folder
        # (train.csv beside train/), train_split/val_split are train, val or all (see DATA_LAYOUTS).
        "layout": "splits",
        # uwmgi_competition: about this share of the slices is held out as the val split, in whole cases (patients).
        "val_fraction": 0.2,
    },
    "train": {
        "epochs": 10,
        "batch_size": 8,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        # cosine: linear warm-up for warmup_epochs, then cosine decay to 0 over the run;
        # exponential: lr * gamma every step_epochs epochs (seed 004's ExponentialLR); constant: lr throughout.
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "gamma": 0.6,
        "step_epochs": 5,
        "loss": "dice_ce",
        # The Dice term summed over the whole batch instead of per image (nnU-Net's batch Dice; dice_ce and dice).
        "batch_dice": False,
        # A class absent from the target (the image's, or the batch's with batch_dice) adds no Dice loss, as in
        # segmentation_models_pytorch's DiceLoss (dice_ce and dice).
        "dice_skip_absent": False,
        "augment": 1.0,
        # full: flips, 90° rotations, affine, colour, blur and dropout; flips: flips and 90° rotations only.
        "augment_preset": "full",
        # Magnitude of the colour augmentation (brightness, contrast, saturation, hue, gamma ranges) as a factor of
        # the default's: 2 doubles every range, for images from other centres and light sources; 0: none.
        "augment_colour": 1.0,
        # Probability of replacing a training image by a lesion-free crop of it (a negative example, see
        # medseg_core.transforms.LesionFreeCrop); 0: never.
        "negative_crops": 0.0,
        # Repeat-factor sampling (medseg_core.data.repeat_factors): images holding a foreground class found in fewer
        # than this fraction of the training images are drawn more often, by sqrt(threshold / fraction); 0: off.
        "repeat_factor_threshold": 0.0,
        "num_workers": 0,
        "precision": "auto",
        "channels_last": True,
        "max_train_samples": None,
        "max_val_samples": None,
        # Start from these weights (a weights/ name, a folder or a Hub id) instead of the encoder's ImageNet ones:
        # fine-tuning. The architecture and outputs must match the recipe's model section.
        "init_from": None,
        # true: the init_from weights may differ from the model in the number of outputs only (weights trained for
        # other classes, e.g. the binary polyp model seeding a 3-class NeoPolyp model); the output layer starts fresh.
        "init_reset_head": False,
        # Exponential moving average of the weights (timm's ModelEmaV3) with this decay; validation, the saved
        # model and checkpoints use the average. 0: off.
        "ema": 0.0,
        # Multi-scale training: each batch is resized by one of these factors of the input size (rounded to a
        # multiple of 32), e.g. [0.75, 1.0, 1.25]. Validation stays at the input size.
        "scales": None,
        # best: keep the weights with the best validation score; last: the weights at the end of the run (the
        # validation is still logged).
        "select": "best",
    },
}


class RecipeError(ValueError):
    """A recipe or override that names an unknown key or holds an impossible value; the message says which."""


class DataLayoutError(RecipeError, FileNotFoundError):
    """``data.root`` does not hold what ``data.layout`` reads (no ``train.csv``, no ``train/`` folder, a slice the
    CSV names without an image): a recipe mistake, and a missing file, so the commands exit with status 2."""


def _unknown(key: str, known: Sequence[str], where: str) -> RecipeError:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return RecipeError(f"unknown recipe key {where}{key!r}{hint}")


def _merge(cfg: dict[str, Any], updates: Mapping[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value


def _apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> None:
    if len(overrides) % 2:
        raise RecipeError(f"overrides come in pairs --section.key value; got {list(overrides)}")
    for flag, raw in zip(overrides[::2], overrides[1::2]):
        if not flag.startswith("--"):
            raise RecipeError(f"unexpected argument {flag!r}: overrides look like --train.epochs 2")
        *sections, leaf = flag[2:].replace("-", "_").split(".")
        node = cfg
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{flag}: {s!r} is a value, not a section")
        node[leaf] = yaml.safe_load(raw)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`RecipeError` for unknown keys (with close matches) and unknown optimiser or schedule names."""
    for key in cfg:
        if key not in DEFAULTS and not key.startswith("_"):
            raise _unknown(key, list(DEFAULTS), "")
    for section in ("labels", "data", "train"):
        for key in cfg[section]:
            if key not in DEFAULTS[section]:
                raise _unknown(key, list(DEFAULTS[section]), f"{section}.")
    model = cfg["model"]
    try:
        cls = get_model_class(model.get("arch", ""))
    except ValueError as err:
        raise RecipeError(f"model.arch: {err}") from err
    accepted = set(cls._hub_mixin_init_parameters) | {"arch"}
    for key in model:
        if key not in accepted:
            raise _unknown(key, sorted(accepted - {"self"}), f"model.{model['arch']}.")
    _check_model(model)
    if not isinstance(cfg["name"], str) or not _NAME.fullmatch(cfg["name"]):
        raise RecipeError(f"name must be a plain name (letters, digits, '_', '.', '-', '+'; it names the run's "
                          f"folder); got {str(cfg['name'])[:80]!r}")
    t = cfg["train"]
    if t["optimizer"] not in OPTIMIZERS:
        raise RecipeError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}; got {t['optimizer']!r}")
    if t["schedule"] not in SCHEDULES:
        raise RecipeError(f"train.schedule must be one of {', '.join(SCHEDULES)}; got {t['schedule']!r}")
    _check_int(t, "train.epochs", 1, MAX_EPOCHS)
    _check_int(t, "train.batch_size", 1, MAX_BATCH_SIZE)
    _check_int(t, "train.num_workers", 0, MAX_NUM_WORKERS)
    _check_int(t, "train.max_train_samples", 1, None, optional=True)
    _check_int(t, "train.max_val_samples", 1, None, optional=True)
    _check_int(cfg["data"], "data.cache_max_side", INPUT_MULTIPLE, MAX_IMAGE_SIDE, optional=True)
    _check_number(t, "lr", 0.0, _MAX_NUMBER, f"a learning rate from 0 to {_MAX_NUMBER:g}")
    _check_number(t, "weight_decay", 0.0, 1.0, "a number from 0 to 1")
    _check_number(t, "momentum", 0.0, 1.0, "a number in [0, 1)", below_hi=True)
    _check_number(t, "gamma", 0.0, 1.0, "a factor in (0, 1]", above_lo=True)
    _check_number(t, "warmup_epochs", 0.0, MAX_EPOCHS, f"a number of epochs from 0 to {MAX_EPOCHS}")
    _check_number(t, "step_epochs", 0.0, MAX_EPOCHS, f"a number of epochs above 0, at most {MAX_EPOCHS}",
                  above_lo=True)
    _check_number(t, "augment", 0.0, 1.0, "a strength from 0 to 1 (it scales the augmentation probabilities)")
    if t["precision"] not in PRECISIONS:
        hint = " (YAML reads a bare no as false: write \"no\")" if t["precision"] is False else ""
        raise RecipeError(f"train.precision must be one of {', '.join(PRECISIONS)}{hint}; got {t['precision']!r}")
    for key in ("batch_dice", "dice_skip_absent", "init_reset_head", "channels_last"):
        if not isinstance(t[key], bool):
            raise RecipeError(f"train.{key} must be true or false; got {t[key]!r}")
    if t["init_reset_head"] and not t["init_from"]:
        raise RecipeError("train.init_reset_head applies to weights named by train.init_from, and none are named")
    for key in ("batch_dice", "dice_skip_absent"):
        if t[key] and t["loss"] not in ("dice_ce", "dice"):
            raise RecipeError(f"train.{key} applies to the dice_ce and dice losses, not {t['loss']!r}")
    for key, choices in (("augment_preset", ("full", "flips")), ("select", ("best", "last"))):
        if t[key] not in choices:
            raise RecipeError(f"train.{key} must be one of {', '.join(choices)}; got {t[key]!r}")
    _check_number(t, "augment_colour", 0.0, 3.0, "a factor from 0 to 3")
    _check_number(t, "negative_crops", 0.0, 1.0, "a probability from 0 to 1")
    _check_number(t, "repeat_factor_threshold", 0.0, 1.0, "a fraction from 0 to 1 (0: off)")
    _check_number(t, "ema", 0.0, 1.0, "a decay in [0, 1) (0: off)", below_hi=True)
    _check_splits(cfg["data"])
    if cfg["data"]["mix_splits"] and t["repeat_factor_threshold"]:
        raise RecipeError("data.mix_splits and train.repeat_factor_threshold both choose what a batch holds; use one")
    scales = t["scales"]
    if scales is not None and (not isinstance(scales, list) or not scales
                               or not all(isinstance(f, (int, float)) and 0.25 <= f <= 2.0 for f in scales)):
        raise RecipeError(f"train.scales must be a list of factors between 0.25 and 2, e.g. [0.75, 1.0, 1.25]; "
                          f"got {scales!r}")
    recipe_schema(cfg)


def _check_splits(data: Mapping[str, Any]) -> None:
    """``data.train_split`` a split name, ``data.val_split`` one or a list, ``data.mix_splits`` a mapping of split
    names to shares of a batch, each between 0 and 1 and together below 1; ``data.layout`` and, for the UW-Madison
    competition layout, its split names, ``data.val_fraction`` and its mask encoding."""
    _check_layout(data)
    if not isinstance(data["train_split"], str) or not data["train_split"]:
        raise RecipeError(f"data.train_split must be a split name; got {data['train_split']!r}")
    val = data["val_split"]
    if not (isinstance(val, str) and val) and not (isinstance(val, list) and val
                                                   and all(isinstance(v, str) and v for v in val)):
        raise RecipeError(f"data.val_split must be a split name or a list of them; got {val!r}")
    mix = data["mix_splits"]
    if mix is None:
        return
    if not isinstance(mix, Mapping) or not mix:
        raise RecipeError(f"data.mix_splits must map split names to their share of each batch, e.g. "
                          f"{{polyp-negative-train: 0.25}}; got {mix!r}")
    for name, share in mix.items():
        if not isinstance(name, str) or isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0 < share < 1:
            raise RecipeError(f"data.mix_splits: {name!r} needs a share of each batch between 0 and 1 (exclusive); "
                              f"got {share!r}")
        if name == data["train_split"]:
            raise RecipeError(f"data.mix_splits names the train split {name!r} itself")
    if sum(mix.values()) >= 1:
        raise RecipeError(f"data.mix_splits: the shares sum to {sum(mix.values()):g}; they must leave room for the "
                          "train split (sum below 1)")


def _check_layout(data: Mapping[str, Any]) -> None:
    """``data.layout`` one of :data:`DATA_LAYOUTS`; the ``uwmgi_competition`` layout reads split names
    :data:`UWMGI_SPLITS`, run-length masks (``rle_csv``), no extra splits, and ``data.val_fraction`` in (0, 1)."""
    layout = data["layout"]
    if layout not in DATA_LAYOUTS:
        raise RecipeError(f"data.layout must be one of {', '.join(DATA_LAYOUTS)}; got {layout!r}")
    fraction = data["val_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise RecipeError(f"data.val_fraction must be the share of the slices held out (in whole cases), between 0 "
                          f"and 1 (exclusive); got {fraction!r}")
    if layout != "uwmgi_competition":
        return
    for key in ("train_split", "val_split"):
        names = data[key] if isinstance(data[key], list) else [data[key]]
        if not names or any(n not in UWMGI_SPLITS for n in names):
            raise RecipeError(f"data.{key}: the uwmgi_competition layout's splits are {', '.join(UWMGI_SPLITS)} "
                              f"(cases divided by data.val_fraction); got {data[key]!r}")
    if data["mask_encoding"] != "rle_csv":
        raise RecipeError(f"data.mask_encoding: the uwmgi_competition layout's masks are the run-lengths of "
                          f"train.csv (rle_csv); got {data['mask_encoding']!r}")
    if data["mix_splits"]:
        raise RecipeError("data.mix_splits: the uwmgi_competition layout has no extra splits to mix in")


def _check_number(t: Mapping[str, Any], key: str, lo: float, hi: float, what: str, below_hi: bool = False,
                  above_lo: bool = False) -> None:
    """``train.<key>`` must be a number from ``lo`` to ``hi`` (``hi`` excluded with ``below_hi``, ``lo`` with
    ``above_lo``)."""
    v = t[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or (below_hi and v == hi) \
            or (above_lo and v == lo):
        hint = ""
        if isinstance(v, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", v.strip()):
            hint = " (YAML reads 1e-4 as text: write 1.0e-4 or 0.0001)"
        raise RecipeError(f"train.{key} must be {what}{hint}; got {v!r}")


def _check_int(section: Mapping[str, Any], name: str, lo: int, hi: int | None, optional: bool = False) -> None:
    """``section[key]`` (``name`` is ``section.key``) must be an integer from ``lo`` to ``hi`` (no upper bound when
    None), or None when ``optional``."""
    v = section[name.split(".")[-1]]
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise RecipeError(f"{name} must be an integer {span}{' (or null)' if optional else ''}; got {v!r}")


def _check_model(model: Mapping[str, Any]) -> None:
    """The model section within the bounds of a weights config (:func:`medseg_core.safety.validate_model_config`:
    types, ``input_size`` at most :data:`~medseg_core.safety.MAX_INPUT_SIZE`, ``num_classes``, list lengths, finite
    numbers), and ``input_size`` a multiple of :data:`INPUT_MULTIPLE`; checked before anything is built."""
    size = model.get("input_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size % INPUT_MULTIPLE
                             or not INPUT_MULTIPLE <= size <= MAX_INPUT_SIZE):
        raise RecipeError(f"model.input_size must be a multiple of {INPUT_MULTIPLE} (each encoder stage halves the "
                          f"side) from {INPUT_MULTIPLE} to {MAX_INPUT_SIZE} (the largest the app loads); got {size!r}")
    try:
        validate_model_config(dict(model), "model")
    except UnsafeWeightsError as err:
        message = re.sub(r"^model: config\.json field '(\w+)'", r"model.\1", str(err))
        raise RecipeError(message.replace("config.json", "the recipe's model section")) from err


def recipe_schema(cfg: Mapping[str, Any]) -> LabelSchema:
    """The label schema a recipe trains: its ``labels`` section with ``data.mask_encoding``, checked against
    ``model.num_classes``; raises :class:`RecipeError` when they do not fit."""
    labels, n = cfg["labels"], cfg["model"].get("num_classes", 1)
    encoding = cfg["data"]["mask_encoding"]
    try:
        if labels.get("task"):
            schema = LabelSchema(labels["task"], tuple(labels.get("class_names") or ()),
                                 tuple(tuple(c) for c in labels.get("colours") or ()), encoding)
        else:
            base = schema_from_config({"num_classes": n})
            schema = LabelSchema(base.task, base.class_names, base.colours, encoding)
    except ValueError as err:
        raise RecipeError(f"labels: {err}") from err
    if not schema.outputs_ok(n):
        raise RecipeError(f"labels: a {schema.task} schema with {len(schema.class_names)} classes does not fit "
                          f"model.num_classes {n}")
    if schema.mask_encoding == "palette" and not labels.get("colours"):
        raise RecipeError("labels.colours: palette masks need the colour of every class")
    return schema

def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top: mappings merge key by key, at any depth; any other value replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a mapping, its ``base:`` resolved: ``base: other.yaml`` (a path relative to the recipe's
    folder) is read first, and this file's keys are deep-merged over it; a base may name a base of its own.

    Raises:
        RecipeError: a file that is not a mapping, a ``base`` that is not a file name or does not exist, a cycle.
        FileNotFoundError: ``path`` itself does not exist.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        cycle = " -> ".join(p.name for p in (*_seen, resolved))
        raise RecipeError(f"the base recipes form a cycle: {cycle}")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, Mapping):
        raise RecipeError(f"{path} is not a recipe: expected sections model, data, train")
    recipe = dict(recipe)
    base = recipe.pop("base", None)
    if base is None:
        return recipe
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: base must name another recipe file, e.g. base: unet_lite0_polyp.yaml; "
                          f"got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise RecipeError(f"{path}: base recipe {base_path} does not exist")
    return _deep_merge(_read_recipe(base_path, (*_seen, resolved)), recipe)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe: :data:`DEFAULTS`, updated by the YAML file (with its ``base:`` chain, :func:`_read_recipe`),
    updated by ``--section.key value`` overrides.

    Raises:
        RecipeError: an unknown key anywhere (with the close matches), a malformed override, a bad option value,
            a missing base recipe or a cycle of them.
    """
    cfg = copy.deepcopy(DEFAULTS)
    _merge(cfg, _read_recipe(path))
    _apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg
