"""Command-line pieces every medseg command shares: how a command runs (:func:`run_command`: exit statuses, one-line
errors, ``--debug``), its parser (:class:`ArgumentParser`), the ``--postprocess`` and ``--threshold`` arguments,
logging set-up, writing a result JSON, and the warning when a setting is chosen on a test split.

Exit statuses, as Unix tools have them: 0 success, 1 failure (the work went wrong), 2 usage error (a mistake in what
was asked: a flag, an unknown model or split name, a file that does not exist). A user's mistake is one line on
stderr naming what was wrong and what would be right; ``--debug`` adds the traceback. Nothing here imports torch,
so a command's ``--help`` and its usage errors come back at once (the work is imported only to run).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .postprocess import POSTPROCESSING_STEPS, PostprocessSpec, resolve_postprocess

__all__ = ["ArgumentParser", "InputRefused", "UsageError", "add_postprocess_argument", "add_threshold_argument",
           "close_matches", "postprocess_from_args", "run_command", "setup_logging", "warn_if_test_split", "write_json"]


class UsageError(SystemExit):
    """A mistake in what the user asked for (an unknown name, a file that does not exist, a value out of range).

    :func:`run_command` prints its message as one line and exits with status 2. It is a ``SystemExit`` so that code
    calling a command's ``main`` directly stops as it would at a usage error, with the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputRefused(ValueError):
    """Input that was read and refused (weights whose config is out of range or unreadable, a file that is not what
    it claims): :func:`run_command` prints its message as one line, without the traceback, and exits with status 2,
    as for a usage error. ``medseg_core.safety.UnsafeWeightsError`` is one."""


def close_matches(word: str, choices: Sequence[str], n: int = 3) -> str:
    """`` (did you mean X?)`` with the choices closest to ``word``, or an empty string."""
    found = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean {' or '.join(found)}?)" if found else ""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``--debug`` and one-line errors: an unknown flag comes back with the close
    matches among the parser's own (``--limt`` -> ``did you mean --limit?``) and a pointer to ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="on an error, print the traceback too")

    def suggest(self, message: str) -> str:
        """``message`` with the close matches of every unknown flag it names."""
        if not message.startswith("unrecognized arguments:"):
            return message
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        hints = [f"{word}{close_matches(word.split('=')[0], flags, n=1)}"
                 for word in message.split(":", 1)[1].split() if word.startswith("-")]
        return "unrecognized arguments: " + ", ".join(hints) if hints else message

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {self.suggest(message)} (see {self.prog} --help)\n")


def _one_line(err: BaseException) -> str:
    """An exception as one line: a missing file says which; other messages lose their line breaks."""
    if isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename} does not exist"
    else:
        text = str(err) or type(err).__name__
    return re.sub(r"\s*\n\s*", "; ", text.strip())


def run_command(prog: str, parse: Callable[[Sequence[str] | None], argparse.Namespace], target: str,
                argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parse`` (light: argparse and checks of the arguments), then import ``target``
    (``"module:function"``, the heavy part) and call it with the parsed arguments; return the exit status.

    ``--help`` and argparse's usage errors leave as ``SystemExit`` (0 and 2) before anything heavy is imported. What
    ``target`` returns is the status when it is an int, else 0. :class:`UsageError`, ``FileNotFoundError`` and
    :class:`InputRefused` (refused weights) are usage errors (2), anything else a failure (1); both as one line on
    stderr, the traceback only with ``--debug``.
    """
    args = parse(argv)
    debug = getattr(args, "debug", False)
    setup_logging()
    try:
        module, function = target.split(":")
        result = getattr(importlib.import_module(module), function)(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError, InputRefused) as err:
        return _report(prog, err, 2, debug)
    except SystemExit as err:
        if err.code is None or isinstance(err.code, int):
            return err.code or 0
        return _report(prog, err, 1, debug)
    except Exception as err:  # noqa: BLE001 - one line for the user; --debug for whoever debugs it
        return _report(prog, err, 1, debug, f"{type(err).__name__}: ")
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _report(prog: str, err: BaseException, status: int, debug: bool, kind: str = "") -> int:
    if debug:
        traceback.print_exception(err)
    line = _one_line(err)
    if line.startswith(f"{prog}: "):  # a message that already names the command
        line = line[len(prog) + 2:]
    hint = "" if debug or status == 2 or not kind else " (run again with --debug for the traceback)"
    print(f"{prog}: error: {kind}{line}{hint}", file=sys.stderr)
    return status


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
    """INFO logs to stderr, one line each (results go to stdout or ``--json``)."""
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
