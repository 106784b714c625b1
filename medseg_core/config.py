"""Training recipes: YAML files with ``model``, ``data`` and ``train`` sections, overridden by ``--section.key value``.

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

__all__ = ["DEFAULTS", "MAX_BATCH_SIZE", "MAX_EPOCHS", "OPTIMIZERS", "PRECISIONS", "SCHEDULES", "RecipeError",
           "load_config", "recipe_schema", "validate_config"]

#: Optimisers and learning-rate schedules a recipe can name (``train.optimizer`` / ``train.schedule``).
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "exponential", "constant")
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
        "augment": 1.0,
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
    },
}


class RecipeError(ValueError):
    """A recipe or override that names an unknown key or holds an impossible value; the message says which."""


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
    for key in ("batch_dice", "init_reset_head", "channels_last"):
        if not isinstance(t[key], bool):
            raise RecipeError(f"train.{key} must be true or false; got {t[key]!r}")
    if t["init_reset_head"] and not t["init_from"]:
        raise RecipeError("train.init_reset_head applies to weights named by train.init_from, and none are named")
    if t["batch_dice"] and t["loss"] not in ("dice_ce", "dice"):
        raise RecipeError(f"train.batch_dice applies to the dice_ce and dice losses, not {t['loss']!r}")
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
    names to shares of a batch, each between 0 and 1 and together below 1."""
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

def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe: :data:`DEFAULTS`, updated by the YAML file, updated by ``--section.key value`` overrides.

    Raises:
        RecipeError: an unknown key anywhere (with the close matches), a malformed override, a bad option value.
    """
    cfg = copy.deepcopy(DEFAULTS)
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(recipe, Mapping):
        raise RecipeError(f"{path} is not a recipe: expected sections model, data, train")
    _merge(cfg, recipe)
    _apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg
