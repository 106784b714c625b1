"""A training run's validation curve, one row per epoch, from the TensorBoard logs the trainer writes.

    python train/history.py runs/unet_lite2.neopolyp_from_polyp --json docs/results/<name>_history.json

``train/train.py`` logs every epoch's validation metrics (``val/*``; ``val_no_ema/*`` for the trained weights of an
EMA run) and the epoch's mean training loss (``train/epoch_loss``) to TensorBoard under the run folder. This prints
them as a table, one row per epoch, and with ``--json`` writes them out, so a curve can be quoted and checked
without TensorBoard open. Per-step series (``train/loss``, ``train/lr``) are left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medseg_core.cli import write_json

#: Tag prefixes logged once per epoch (at the epoch's last optimiser step); ``train/epoch`` numbers the epoch.
EPOCH_TAGS = ("val/", "val_no_ema/", "train/epoch_loss", "train/epoch")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch rows ``{"epoch", "step", <tag>: value, ...}`` from every event file under ``run_dir``, in step
    order. A step logged twice (a resumed run repeating part of an epoch) keeps the later value. The epoch is the
    logged ``train/epoch``; logs written before the trainer logged it are numbered by their order.

    A run folder reused without ``--resume`` holds the event files of both runs, and epochs only the older one
    reached stay in the table: give each run its own ``--output-dir``."""
    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {run_dir}")
    by_step: dict[int, dict[str, tuple[float, float]]] = {}
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith(EPOCH_TAGS):
                for event in events.Scalars(tag):
                    old = by_step.setdefault(event.step, {}).get(tag)
                    if old is None or event.wall_time >= old[0]:
                        by_step[event.step][tag] = (event.wall_time, event.value)
    rows = []
    for i, step in enumerate(sorted(by_step), start=1):
        values = {tag: value for tag, (_, value) in by_step[step].items()}
        epoch = values.pop("train/epoch", i)
        rows.append({"epoch": int(epoch), "step": step, **values})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Print (and save) a run's per-epoch validation metrics from its "
                                            "TensorBoard logs.")
    p.add_argument("run", help="the run folder (train.py --output-dir; runs/<recipe name> by default)")
    p.add_argument("--json", help="write the rows to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    try:
        rows = read_history(args.run)
    except FileNotFoundError as err:
        raise SystemExit(f"history: {err}") from err
    tags = sorted({k for r in rows for k in r} - {"epoch", "step"})
    print("epoch  step  " + "  ".join(tags))
    for r in rows:
        print(f"{r['epoch']:>5} {r['step']:>5}  " + "  ".join(
            f"{r[t]:>{len(t)}.4f}" if t in r else " " * len(t) for t in tags))
    write_json(args.json, {"run": str(args.run), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
