"""The console commands (``medseg-*`` in pyproject.toml): each one's parser and its entry point.

A parser is built, and its arguments checked, without importing torch or Gradio, so ``--help`` and a mistyped flag
answer at once; the module that does the work is imported only to run it (:func:`medseg_core.cli.run_command`, which
also turns errors into exit statuses and one-line messages). The library modules parse their ``main(argv)``'s
arguments with the same functions, so a command has one parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .cli import ArgumentParser, add_postprocess_argument, add_threshold_argument, postprocess_from_args, run_command
from .labels import MASK_ENCODINGS
from .postprocess import POSTPROCESSING_STEPS

__all__ = ["app", "calibrate", "evaluate", "export", "parse_app_args", "parse_calibrate_args", "parse_evaluate_args",
           "parse_export_args", "parse_segment_args", "parse_soup_args", "parse_train_args", "predict_folder",
           "segment", "soup", "train"]

Argv = Sequence[str] | None
MODEL_HELP = "a name under weights/, a weights folder, or a Hub repo id"


def _must_exist(parser: argparse.ArgumentParser, flag: str, path: str | None, hint: str = "") -> None:
    """A usage error when ``path`` (given with ``flag``) does not exist."""
    if path is not None and not Path(path).exists():
        parser.error(f"{flag}{' ' if flag else ''}{path} does not exist{hint}")


# ---- medseg-evaluate -------------------------------------------------------------------------------------------------


def parse_evaluate_args(argv: Argv = None) -> argparse.Namespace:
    p = ArgumentParser(prog="medseg-evaluate",
                       description="Evaluate a segmentation model on a split or a folder of image/mask pairs.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/ (with --split)")
    p.add_argument("--split", nargs="+", metavar="SPLIT",
                   help="split name (e.g. test-kvasir) or path to a split .txt file; several are read together")
    p.add_argument("--images", help="folder of images (instead of --split)")
    p.add_argument("--masks", help="folder of masks matching --images by file name")
    p.add_argument("--mask-encoding", choices=MASK_ENCODINGS, default=None,
                   help="how the masks store classes (default: the mask_encoding of the weights' label schema)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--tta-scales", type=float, nargs="+", metavar="F", default=None,
                   help="run the TTA flips at these factors of the input size, e.g. 0.82 1 1.18 (implies --tta; "
                        "default: the tta_scales recorded with the weights, else 1); torch backend only")
    add_threshold_argument(p)
    p.add_argument("--class-bias", type=float, nargs="+", metavar="B", default=None,
                   help="multi-class models: one log-odds offset per class for choosing a lesion's class, e.g. 0 0 0 "
                        "for plain argmax (default: the class_bias recorded with the weights, else none)")
    add_postprocess_argument(p)
    add_presence_argument(p)
    p.add_argument("--sweep", metavar="PNG",
                   help="also sweep the presence threshold: the trade-off between per-lesion sensitivity and false "
                        "alarms as a PNG, with its data beside it (X.png -> X_sweep.json)")
    p.add_argument("--pranet-mean-dice", action="store_true",
                   help="also report the PraNet-protocol Dice averaged over thresholds 0..255 (labelled as such)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", help="write mean and per-image metrics to this JSON file")
    p.add_argument("--csv", help="write per-image metrics to this CSV file")
    p.add_argument("--device", default=None, help="cpu or cuda (default: this process's accelerator device)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="inference precision")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="network engine (auto: onnxruntime when the weights folder has model.onnx)")
    args = p.parse_args(argv)
    if bool(args.split) == bool(args.images):
        p.error("give either --split or --images/--masks")
    if args.images and not args.masks:
        p.error("--images needs --masks")
    _must_exist(p, "--images", args.images)
    _must_exist(p, "--masks", args.masks)
    args.postprocess = postprocess_from_args(p, args.postprocess)
    args.tta = args.tta or args.tta_scales is not None
    return args


def add_presence_argument(p: argparse.ArgumentParser) -> None:
    """``--presence recorded|none``: whether the lesion-present rule recorded with the weights applies."""
    p.add_argument("--presence", choices=["recorded", "none"], default="recorded",
                   help="'recorded' (default): apply the lesion-present rule recorded in the weights' config.json "
                        "(regions below its confidence or area are not drawn); 'none': every region counts")


def evaluate(argv: Argv = None) -> int:
    """``medseg-evaluate``: the metric table on stdout (``--json``/``--csv`` for the per-image rows)."""
    return run_command("medseg-evaluate", parse_evaluate_args, "medseg_core.evaluation:run", argv)


# ---- medseg-calibrate -----------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction above 0 and at most 1")
    return value


#: The flags that belong to one ``--what`` only, and that one.
_CALIBRATE_ONLY = {"specificity": "presence", "plot": "presence", "steps": "postprocess", "refiner": "postprocess",
                   "min_gain": "postprocess", "tta": "postprocess", "mask_encoding": "postprocess",
                   "chains": "class-bias"}


def parse_calibrate_args(argv: Argv = None) -> argparse.Namespace:
    p = ArgumentParser(prog="medseg-calibrate", description=(
        "Choose a setting on validation splits and record it in the weights' config.json. --what postprocess: the "
        "post-processing steps that raise Dice; class-bias: a multi-class model's per-class log-odds offsets; "
        "thresholds: a multi-label model's per-class probability thresholds; presence: the image-level 'lesion "
        "present' rule with the highest per-lesion sensitivity at a given frame specificity."))
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--what", choices=["postprocess", "class-bias", "thresholds", "presence"], default="presence",
                   help="what to calibrate (default: presence)")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--split", nargs="+", required=True, metavar="SPLIT",
                   help="validation splits read together; for presence, with frames with and without a lesion, "
                        "e.g. polyp-val polyp-negative-val")
    p.add_argument("--record", action="store_true", help="write the choice into the weights' config.json")
    p.add_argument("--json", help="write the choice and its figures to this JSON file")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto", help="network engine")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("presence")
    g.add_argument("--specificity", type=_fraction, default=None,
                   help="least share of lesion-free frames left undrawn (default 0.95)")
    g.add_argument("--plot", metavar="PNG", help="the sensitivity / false-alarm trade-off with the rule marked "
                                                 "(its data beside it: X.png -> X_sweep.json)")
    g = p.add_argument_group("postprocess")
    g.add_argument("--steps", nargs="+", default=None, choices=sorted(POSTPROCESSING_STEPS), metavar="STEP",
                   help="the chain tried, in order (default: remove_small_components fill_holes adaptive_morphology "
                        "region_class_consistency, then refine with --refiner)")
    g.add_argument("--refiner", default=None, help="weights of a 'refiner' model for the refine step")
    g.add_argument("--min-gain", type=float, default=None,
                   help="the least gain in the headline score (alone, against none) a recorded step needs "
                        "(default 0.001)")
    g.add_argument("--tta", action="store_true", default=None, help="flip test-time augmentation")
    g.add_argument("--mask-encoding", choices=MASK_ENCODINGS, default=None,
                   help="how the masks store classes (default: the mask_encoding of the weights' label schema)")
    g = p.add_argument_group("class-bias and thresholds")
    g.add_argument("--grid", nargs="+", type=float, default=None, metavar="V",
                   help="class-bias: log-odds offsets tried for each lesion class (default 0 0.25 .. 3); thresholds: "
                        "probability thresholds tried for each class (default 0.05 .. 0.95; 0.5 always)")
    g.add_argument("--chains", nargs="+", default=None, metavar="CHAIN",
                   help="class-bias: post-processing chains tried, each as step names joined by '+' ('none': raw "
                        "masks; default: none region_class_consistency)")
    args = p.parse_args(argv)
    for key, what in _CALIBRATE_ONLY.items():
        if getattr(args, key) is not None and args.what != what:
            p.error(f"--{key.replace('_', '-')} is for --what {what}")
    if args.grid is not None and args.what not in ("class-bias", "thresholds"):
        p.error("--grid is for --what class-bias or thresholds")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be a positive number of images")
    if args.steps and "refine" in args.steps and not args.refiner:
        p.error("the refine step needs --refiner")
    for chain in args.chains or []:
        unknown = [s for s in chain.split("+") if chain != "none" and s not in POSTPROCESSING_STEPS]
        if unknown:
            p.error(f"--chains: unknown post-processing step {unknown[0]!r}; choose from "
                    f"{', '.join(sorted(POSTPROCESSING_STEPS))}")
    args.specificity = 0.95 if args.specificity is None else args.specificity
    args.min_gain = 0.001 if args.min_gain is None else args.min_gain
    args.tta = bool(args.tta)
    args.chains = args.chains or ["none", "region_class_consistency"]
    return args


def calibrate(argv: Argv = None) -> int:
    """``medseg-calibrate``: the chosen setting and its figures on stdout; ``--record`` writes it."""
    return run_command("medseg-calibrate", parse_calibrate_args, "medseg_core.calibrate:run", argv)


# ---- medseg-train ----------------------------------------------------------------------------------------------------


def _recipe_sections(path: str) -> set[str]:
    """The top-level keys of a YAML recipe (``name``, ``model``, ``data``, ...) and of its ``base:`` chain, read
    without building anything; what cannot be read adds nothing (loading the recipe will say what is wrong)."""
    import yaml

    sections: set[str] = set()
    seen: set[Path] = set()
    file: Path | None = Path(path)
    while file is not None and file.resolve() not in seen:
        seen.add(file.resolve())
        try:
            recipe = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError):
            break
        if not isinstance(recipe, dict):
            break
        sections |= set(recipe) - {"base"}
        file = file.parent / recipe["base"] if isinstance(recipe.get("base"), str) else None
    return sections


def parse_train_args(argv: Argv = None) -> argparse.Namespace:
    """The flags; ``overrides`` holds the ``--section.key value`` recipe overrides (checked when the recipe loads)."""
    p = ArgumentParser(
        prog="medseg-train",
        description="Train a medseg model from a YAML recipe. Any recipe value can be overridden with "
        "--section.key value (e.g. --train.epochs 2 --model.encoder tf_efficientnet_lite2); unknown keys are errors.",
    )
    p.add_argument("--config", required=True, help="YAML recipe, e.g. train/configs/unet_lite0_polyp.yaml")
    p.add_argument("--output-dir", default=None, help="where the run writes (default runs/<recipe name>)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder written by an earlier run")
    p.add_argument("--trust-resume", action="store_true",
                   help="resume from a checkpoint folder this trainer cannot verify (an older version's, or one from "
                   "elsewhere): its pickled files run as code, so only for a folder you trust as code")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (smoke tests)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the best model to this Hub repo")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also checkpoint every N optimiser steps (default: at the end of each epoch only)")
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="K", help="complete checkpoints kept")
    p.add_argument("--on-nan", choices=("stop", "skip"), default="stop",
                   help="a NaN/infinite loss stops the run (default) or skips that batch")
    p.add_argument("--skip-data-check", action="store_true", help="do not decode every file before training")
    args, overrides = p.parse_known_args(argv)
    _must_exist(p, "--config", args.config, " (the recipes are in train/configs/)")
    # Recipe overrides are --section.key, or --section for a whole section of the recipe; any other unknown flag
    # is a typo of one of ours.
    sections = _recipe_sections(args.config)
    typos = [word for word in overrides if word.startswith("-") and "." not in word.split("=")[0]
             and word.lstrip("-").split("=")[0].replace("-", "_") not in sections]
    if typos:
        p.error(f"unrecognized arguments: {' '.join(typos)}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        p.error("--checkpoint-every must be a positive number of steps")
    if args.keep_checkpoints < 1:
        p.error("--keep-checkpoints must be at least 1")
    args.overrides = overrides
    return args


def train(argv: Argv = None) -> int:
    """``medseg-train``: the run folder's ``model/`` holds the best weights."""
    return run_command("medseg-train", parse_train_args, "medseg_core.training:run", argv)


# ---- medseg-segment --------------------------------------------------------------------------------------------------


def segment_parser(prog: str = "medseg-segment", folder_flag: bool = False) -> ArgumentParser:
    """The command line of ``medseg-segment``; ``folder_flag`` takes one ``--images DIR`` instead of positional
    inputs (``python -m medseg_core.predict_folder``)."""
    p = ArgumentParser(
        prog=prog,
        description="Segment images, folders of images and zips of images: write <stem>_mask.png, "
        "<stem>_overlay.png and statistics.csv into --out.",
    )
    if folder_flag:
        p.add_argument("--images", dest="inputs", type=lambda v: [v], required=True, help="a folder of images")
    else:
        p.add_argument("inputs", nargs="+", help="image files, folders of images, zip archives")
    p.add_argument("--out", required=True, help="folder to write masks, overlays and statistics.csv to (created)")
    p.add_argument("--model", default=None,
                   help=f"{MODEL_HELP} (default: MEDSEG_DEFAULT_MODEL, else the most accurate polyp model)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    add_postprocess_argument(p)
    add_presence_argument(p)
    add_threshold_argument(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_segment_args(argv: Argv = None, parser: ArgumentParser | None = None) -> argparse.Namespace:
    p = parser or segment_parser()
    args = p.parse_args(argv)
    for path in args.inputs:
        _must_exist(p, "", path)
    args.postprocess = postprocess_from_args(p, args.postprocess)
    return args


def segment(argv: Argv = None) -> int:
    """``medseg-segment``: masks, overlays and statistics.csv in ``--out``; 1 when no image could be segmented."""
    return run_command("medseg-segment", parse_segment_args, "medseg_core.batch:run", argv)


def predict_folder(argv: Argv = None) -> int:
    """``python -m medseg_core.predict_folder``: ``medseg-segment`` with the folder given as ``--images``."""
    prog = "python -m medseg_core.predict_folder"
    parser = segment_parser(prog, folder_flag=True)
    return run_command(prog, lambda a: parse_segment_args(a, parser), "medseg_core.batch:run", argv)


# ---- medseg-export ---------------------------------------------------------------------------------------------------


def parse_export_args(argv: Argv = None) -> argparse.Namespace:
    p = ArgumentParser(prog="medseg-export", description=(
        "Export a model to ONNX (model.onnx next to its config.json), check it against eager PyTorch on a split, "
        "and optionally quantise it to int8 (model.int8.onnx)."))
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", help="output folder (default: the weights folder itself); gets a copy of the weights")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("--check-split", nargs="*", default=[], metavar="SPLIT",
                   help="compare eager and ONNX Runtime on these splits (e.g. test-kvasir test-clinicdb)")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--limit", type=int, default=None, help="check only the first N images of each split")
    p.add_argument("--json", help="write the export and check figures to this JSON file")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static quantisation) and check it")
    p.add_argument("--calib-split", default="polyp-train", help="training split whose images calibrate int8")
    p.add_argument("--calib-n", type=int, default=32, help="calibration images (spread evenly over the split)")
    p.add_argument("--max-dice-loss", type=float, default=0.005,
                   help="int8 is kept only if its Dice loss against eager fp32 is at most this on every checked split")
    p.add_argument("--keep-int8", action="store_true", help="keep model.int8.onnx even when it misses that budget")
    return p.parse_args(argv)


def export(argv: Argv = None) -> int:
    """``medseg-export``: 1 when the int8 model misses its Dice budget."""
    return run_command("medseg-export", parse_export_args, "medseg_core.export:run", argv)


# ---- medseg-soup -----------------------------------------------------------------------------------------------------


def parse_soup_args(argv: Argv = None) -> argparse.Namespace:
    p = ArgumentParser(prog="medseg-soup", description="Average the weights of runs of one network (a model soup), "
                       "uniformly or greedily on a validation split.")
    p.add_argument("--models", nargs="+", required=True,
                   help="weights folders (or weights/ names) of one network, e.g. fine-tunes from the same start")
    p.add_argument("--output", type=Path, required=True, help="folder to write the soup to")
    p.add_argument("--greedy", action="store_true",
                   help="greedy soup chosen on --split (default: the uniform soup of every model)")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--split", help="validation split that scores the ingredients and the soup (needed by --greedy)")
    p.add_argument("--fp16", action="store_true", help="store the averaged tensors in fp16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the ingredients, their scores and the soup's to this JSON file")
    args = p.parse_args(argv)
    if args.greedy and not args.split:
        p.error("--greedy needs --split (a validation split)")
    return args


def soup(argv: Argv = None) -> int:
    """``medseg-soup``: one line on stdout saying what was averaged and where it went."""
    return run_command("medseg-soup", parse_soup_args, "medseg_core.soup:run", argv)


# ---- medseg-app ------------------------------------------------------------------------------------------------------


def parse_app_args(argv: Argv = None) -> argparse.Namespace:
    p = ArgumentParser(prog="medseg-app", description="Serve the medseg web app (Gradio). Models come from "
                       "weights/ (MEDSEG_WEIGHTS_DIR) and MEDSEG_HUB_MODELS=owner/repo,...")
    p.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    return p.parse_args(argv)


def app(argv: Argv = None) -> int:
    """``medseg-app``: serve until interrupted."""
    return run_command("medseg-app", parse_app_args, "medseg_core.webapp:run", argv)
