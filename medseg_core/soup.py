"""Weight averaging across runs: model soups (Wortsman et al., ICML 2022).

Fine-tunes that start from the same weights usually stay in one basin of the loss, so the average of their weights
is itself a good model, often better than each, and more robust to data from elsewhere: for endoscopy, images
from centres and scopes the training set never saw. No extra cost at inference: the soup is one network.

* **uniform soup**: the mean of every ingredient's weights;
* **greedy soup**: the ingredients sorted by their own validation score, best first; each joins the soup only if
  the soup's validation score does not drop (ties join, as in the paper).

Scores are on a validation split, raw masks (no post-processing, threshold 0.5, plain argmax): mean per-image Dice
for binary models, the mean split-level class Dice for multi-class ones (the figure the trainer selects on), the
mean per-image Dice for multi-label ones. Never choose on a test split.

    python train/soup.py --models weights/unet_lite2.polyp runs/a/model runs/b/model --split polyp-val \\
        --greedy --output runs/soup --json docs/results/soup.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import NonFiniteModelError, check_finite
from .cli import UsageError, setup_logging, warn_if_test_split, write_json
from .commands import parse_soup_args
from .commands import soup as soup_command
from .data import Sample, read_split
from .evaluation import evaluate_samples, row_means
from .hub import load_model, resolve_weights
from .inference import Segmenter
from .labels import schema_from_config
from .metrics import split_class_dice

__all__ = ["average_weights", "greedy_soup", "main", "run", "score_weights"]

log = logging.getLogger(__name__)

#: config.json keys that must agree for weights to be averaged (the network's shape and outputs).
_SAME = ("arch", "encoder", "num_classes", "in_channels", "decoder_channels", "input_size", "task", "class_names",
         "mean", "std", "views", "widths")


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def average_weights(folders: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights in ``folders`` (each ``model.safetensors`` + ``config.json``), in fp32;
    integer tensors (BatchNorm's batch counters) are taken from the first. The configs must describe the same
    network, and every folder must hold the same tensors, all finite (:class:`NonFiniteModelError` otherwise)."""
    if not folders:
        raise ValueError("no weights to average")
    paths = [resolve_weights(f) for f in folders]
    first = _config(paths[0])
    for p in paths[1:]:
        other = _config(p)
        differ = [k for k in _SAME if first.get(k) != other.get(k)]
        if differ:
            raise ValueError(f"{p} is another network than {paths[0]} (config differs in {', '.join(differ)})")
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        state = load_file(p / "model.safetensors")
        check_finite(state, f"{p}")  # one broken ingredient would make every tensor it touches NaN
        if total and state.keys() != total.keys():
            raise ValueError(f"{p} holds other tensors than {paths[0]}")
        for k, v in state.items():
            if k in total and v.shape != total[k].shape:
                raise ValueError(f"{p}: tensor {k} has shape {tuple(v.shape)}, not {tuple(total[k].shape)}")
            if not v.is_floating_point():
                total.setdefault(k, v)
            else:
                total[k] = total[k] + v.float() if k in total else v.float().clone()
    return {k: v / len(paths) if v.is_floating_point() else v for k, v in total.items()}


def score_weights(state: dict[str, torch.Tensor], template: str | Path, samples: Sequence[Sample],
                  device: str = "cpu") -> float:
    """The validation score (see the module docstring) of ``state`` loaded into the network of ``template``."""
    model = load_model(template)
    model.load_state_dict(state)
    schema = schema_from_config(_config(resolve_weights(template)))  # config.json's label schema, mask encoding
    segmenter = Segmenter(model, device=device, postprocess="none", schema=schema)
    rows = evaluate_samples(segmenter, samples, progress=False)
    if segmenter.schema.task == "multiclass":
        return split_class_dice(rows)["class_dice"]
    return row_means(rows)["dice"]


def greedy_soup(folders: Sequence[str | Path], samples: Sequence[Sample],
                device: str = "cpu") -> tuple[list[str], dict[str, float], list[dict[str, Any]]]:
    """Greedy soup: (the chosen folders, each ingredient's own score, the trail: one entry per ingredient tried
    after the first, with the score of the soup it would make and whether it was kept). The soup's score is the
    last kept entry's (the best ingredient's own when none was kept)."""
    own = {str(f): score_weights(average_weights([f]), f, samples, device) for f in folders}
    for f, s in own.items():
        log.info("ingredient %s: %.4f", f, s)
    ranked = sorted(own, key=own.get, reverse=True)
    chosen, best, trail = [ranked[0]], own[ranked[0]], []
    for f in ranked[1:]:
        score = score_weights(average_weights([*chosen, f]), ranked[0], samples, device)
        trail.append({"add": f, "soup_score": score, "kept": score >= best})
        log.info("soup + %s: %.4f (%s)", f, score, "kept" if score >= best else "left out")
        if score >= best:
            chosen, best = [*chosen, f], score
    return chosen, own, trail


#: config.json keys tuned on a validation split for one set of weights (medseg-calibrate --record, the TTA scales): the
#: soup is other weights, so they are not carried over.
_TUNED = ("class_bias", "thresholds", "postprocess", "refiner", "tta_scales", "presence")


def save_soup(state: dict[str, torch.Tensor], template: str | Path, output: Path, fp16: bool = False) -> None:
    """Write the soup as a weights folder: ``template``'s config.json without the settings tuned for the template's
    own weights (:data:`_TUNED`; tune them again for the soup), the averaged ``model.safetensors``. Tensors holding a
    NaN or an infinity (after the fp16 cast too) are a :class:`~medseg_core.cli.UsageError`, and nothing is written."""
    tensors = {k: v.half() if fp16 and v.is_floating_point() else v.contiguous() for k, v in state.items()}
    try:  # fp16 stops at 65504: a larger finite weight becomes infinite
        check_finite(tensors, f"the {'fp16 ' if fp16 else ''}soup")
    except NonFiniteModelError as err:
        raise UsageError(f"medseg-soup: {err}; not written") from err
    output.mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "README.md"):  # an earlier soup's export or card would describe other weights
        if (output / stale).exists():
            log.info("removing %s (written for the weights this soup replaces)", output / stale)
            (output / stale).unlink()
    config = _config(resolve_weights(template))
    dropped = [k for k in _TUNED if k in config]
    if dropped:
        log.info("not carried over from %s (tuned for its own weights; tune them again for the soup): %s",
                 template, ", ".join(dropped))
    (output / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in _TUNED}, indent=2,
                                                   sort_keys=True) + "\n")
    save_file(tensors, output / "model.safetensors", metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Make a soup as the command line ``argv`` says (see ``medseg-soup --help``); returns what ``--json`` writes."""
    return run(parse_soup_args(argv))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`main` on parsed arguments (``medseg-soup`` calls this); an unknown model or split is a usage error."""
    setup_logging()
    try:
        samples = read_split(args.data, args.split) if args.split else []
        if args.split:
            warn_if_test_split(args.split, "the soup's ingredients")
        chosen, own, trail, score = list(args.models), {}, [], None
        if args.greedy:
            chosen, own, trail = greedy_soup(args.models, samples, args.device)
            score = max([own[chosen[0]], *(t["soup_score"] for t in trail if t["kept"])])
        state = average_weights(chosen)
        if score is None and samples:
            score = score_weights(state, chosen[0], samples, args.device)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"medseg-soup: {err}") from err
    save_soup(state, chosen[0], args.output, args.fp16)
    result = {"output": str(args.output), "kind": "greedy" if args.greedy else "uniform", "split": args.split,
              "ingredients": own or list(args.models), "trail": trail, "chosen": chosen, "soup_score": score,
              "fp16": args.fp16}
    print(f"{result['kind']} soup of {len(chosen)}: {', '.join(chosen)}"
          + (f"; {args.split} score {score:.4f}" if score is not None else "") + f" -> {args.output}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    raise SystemExit(soup_command())
