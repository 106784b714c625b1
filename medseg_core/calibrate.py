"""Settings chosen on validation splits and recorded with the weights (``medseg-calibrate``).

    medseg-calibrate --model unet_lite2.polyp --split polyp-val polyp-negative-val --what presence \
        --specificity 0.95 --plot runs/presence.png --json runs/presence.json --record

``--what presence`` chooses the image-level "lesion present" rule (:mod:`medseg_core.presence`): the highest
per-lesion sensitivity among the rules whose frame specificity on the given splits' lesion-free frames reaches
``--specificity``. The splits must hold frames without a lesion and frames with one. ``--record`` writes the rule
into the weights' ``config.json``, where ``Segmenter.from_pretrained``, the app, batch, video and every command
read it. Choose on validation splits: the test splits are read once, afterwards, by ``medseg-evaluate``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .cli import UsageError, warn_if_test_split, write_json
from .data import read_splits
from .evaluation import evaluate_samples, write_sweep
from .hub import record_presence, resolve_weights
from .inference import Segmenter
from .presence import choose_presence

__all__ = ["calibrate_presence", "run"]

log = logging.getLogger("medseg.calibrate")


def calibrate_presence(segmenter: Segmenter, rows: list[dict[str, Any]], specificity: float,
                       splits: list[str]) -> dict[str, Any]:
    """The rule :func:`~medseg_core.presence.choose_presence` picks on evaluated rows (taken without any presence
    rule), as ``config.json`` records it (with ``chosen_on`` and ``specificity``), and its figures."""
    try:
        chosen = choose_presence([r["presence"] for r in rows], specificity)
    except ValueError as err:
        raise UsageError(f"medseg-calibrate: {err}") from err
    rule = {**chosen["rule"].to_config(), "chosen_on": [Path(s).stem for s in splits], "specificity": specificity}
    return {"rule": rule, "metrics": chosen["metrics"], "candidates": chosen["candidates"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``medseg-calibrate`` on parsed arguments (see ``medseg_core.commands.parse_calibrate_args``)."""
    for split in args.split:
        warn_if_test_split(split, "a presence rule")
    samples = read_splits(args.data, args.split)[: args.limit]
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, backend=args.backend,
                                          apply_presence="none")
    rows = evaluate_samples(segmenter, samples, presence="none")
    result = calibrate_presence(segmenter, rows, args.specificity, args.split)
    m, rule = result["metrics"], result["rule"]
    title = "+".join(Path(s).stem for s in args.split)
    print(f"{segmenter.name} on {title} ({len(rows)} images): lesion present when the {rule['score']} confidence of "
          f"a region is >= {rule['threshold']:g}" + (f" and it covers >= {100 * rule['min_area']:g} % of the image"
                                                      if rule["min_area"] else ""))
    print(f"  frame specificity {m['frame_specificity']:.4f} ({m['false_alarm_frames']} of {m['lesion_free_frames']} "
          f"lesion-free frames drawn on), per-lesion sensitivity {m['lesion_sensitivity']:.4f} "
          f"({m['lesions_detected']} of {m['truth_lesions']}), mean Dice at the rule {m['dice_at_rule']:.4f}")
    out = {"model": str(args.model), "splits": list(args.split), "n": len(rows), "what": "presence", **result}
    if args.plot:
        from .presence import PresenceRule

        write_sweep(args.plot, rows, PresenceRule.from_config(rule), f"{segmenter.name} on {title}")
    if args.record:
        path = record_presence(resolve_weights(args.model), rule)
        out["recorded_in"] = str(path)
        print(f"recorded in {path}")
    write_json(args.json, out)
    return out
