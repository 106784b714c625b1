"""Command-line pieces every medseg command shares: the ``--postprocess`` and ``--threshold`` arguments, logging
set-up, writing a result JSON, and the warning when a setting is chosen on a test split."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from .postprocess import POSTPROCESSING_STEPS, PostprocessSpec, resolve_postprocess

__all__ = ["add_postprocess_argument", "add_threshold_argument", "postprocess_from_args", "setup_logging",
           "warn_if_test_split", "write_json"]


def add_postprocess_argument(parser: argparse.ArgumentParser) -> None:
    """``--postprocess recorded | none | STEP [STEP ...]``, the same at every command (default ``recorded``)."""
    parser.add_argument(
        "--postprocess", nargs="+", default=["recorded"], metavar="STEP",
        help="'recorded' (default: the chain recorded in the weights' config.json), 'none' (raw masks), or step "
        f"names in order: {', '.join(POSTPROCESSING_STEPS)}",
    )


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability from 0 to 1")
    return value


def add_threshold_argument(parser: argparse.ArgumentParser) -> None:
    """``--threshold P``, the same at every command: one probability for every class, instead of the per-class
    thresholds recorded in the weights' config.json (or 0.5 when none are)."""
    parser.add_argument("--threshold", type=_probability, default=None,
                        help="probability threshold of every class, e.g. 0.5 for the untuned figure (default: the "
                             "per-class thresholds recorded with the weights, else 0.5)")


def postprocess_from_args(parser: argparse.ArgumentParser, values: list[str]) -> PostprocessSpec:
    """The ``--postprocess`` value as a spec (``"recorded"``, ``"none"`` or step names); bad names exit with usage."""
    try:
        resolve_postprocess(values)
    except ValueError as err:
        parser.error(str(err))
    return values[0] if len(values) == 1 and values[0] in ("recorded", "none") else list(values)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def write_json(path: str | os.PathLike | None, result: Any) -> None:
    """Write a command's result (``--json PATH``), creating the folder; nothing when ``path`` is None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))


def warn_if_test_split(split: str, what: str) -> None:
    """Say so when a setting about to be recorded with the weights was chosen on a test split."""
    if "test" in Path(split).stem:
        logging.getLogger("medseg").warning("%s chosen on a test split (%s); report test figures measured on other "
                                            "images", what, split)
