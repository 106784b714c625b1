"""Command-line pieces every medseg command shares: the ``--postprocess`` argument and logging set-up."""

from __future__ import annotations

import argparse
import logging

from .postprocess import POSTPROCESSING_STEPS, PostprocessSpec, resolve_postprocess

__all__ = ["add_postprocess_argument", "postprocess_from_args", "setup_logging"]


def add_postprocess_argument(parser: argparse.ArgumentParser) -> None:
    """``--postprocess recorded | none | STEP [STEP ...]``, the same at every command (default ``recorded``)."""
    parser.add_argument(
        "--postprocess", nargs="+", default=["recorded"], metavar="STEP",
        help="'recorded' (default: the chain recorded in the weights' config.json), 'none' (raw masks), or step "
        f"names in order: {', '.join(POSTPROCESSING_STEPS)}",
    )


def postprocess_from_args(parser: argparse.ArgumentParser, values: list[str]) -> PostprocessSpec:
    """The ``--postprocess`` value as a spec (``"recorded"``, ``"none"`` or step names); bad names exit with usage."""
    try:
        resolve_postprocess(values)
    except ValueError as err:
        parser.error(str(err))
    return values[0] if len(values) == 1 and values[0] in ("recorded", "none") else list(values)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
