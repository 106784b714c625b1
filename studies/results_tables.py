"""The combined results tables in ``docs/results/``, rebuilt from the evaluation JSON kept outside git.

    python studies/results_tables.py                       # runs/results/*.json -> docs/results/<table>.{csv,md}
    python studies/results_tables.py --runs DIR --out DIR

Every JSON that ``medseg-evaluate --json``, ``medseg-train`` (``train_summary.json``), ``studies/zoo.py --json``,
``medseg-calibrate --what postprocess --json``, ``bench/latency.py``, ``bench/video.py``, ``bench/load.py`` and
``bench/train_speed.py`` (each with ``--json``) write is recognised by its keys and becomes one or more rows of one
table; the ``run`` column is the JSON file's name without ``.json``, so a row names the file it came from. Tables:

- ``polyp``: binary evaluations (one lesion class), one row per model and split.
- ``neopolyp``: multi-class evaluations (neoplastic / non-neoplastic), lesion Dice and per-class split-level Dice.
- ``edd2020``: multi-label evaluations (EDD2020's five classes), per-class split-level Dice.
- ``training``: training summaries (best validation score and epoch, with and without EMA, time, device).
- ``zoo``: the model-zoo and ablation runs (one row per entry, seed and test split).
- ``postprocess``: post-processing chains on a split (headline score per chain).
- ``speed``: latency, video throughput, training throughput and load, one row per measured setting.

Other JSON (class-bias and threshold searches, soups, per-epoch histories, single-image evaluations) is listed at the
end as skipped; the study pages quote those figures with the command that writes them. Files with per-image arrays
stay in ``runs/results/`` (git-ignored); only the tables are committed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("results_tables")

ROOT = Path(__file__).resolve().parents[1]

TABLES: dict[str, tuple[str, ...]] = {
    "polyp": ("run", "split", "n", "tta", "postprocess", "presence", "dice", "iou", "accuracy", "precision", "recall",
              "hd95", "lesion_free_images", "false_alarms", "dice_lesion_images", "ms_per_image"),
    "neopolyp": ("run", "split", "n", "tta", "postprocess", "class_bias", "dice", "iou", "hd95",
                 "class_dice_neoplastic", "class_dice_non-neoplastic", "class_dice", "mdice"),
    "edd2020": ("run", "split", "n", "tta", "threshold", "dice", "iou", "accuracy", "hd95", "class_dice_BE",
                "class_dice_suspicious", "class_dice_HGD", "class_dice_cancer", "class_dice_polyp", "class_dice",
                "mdice"),
    "training": ("run", "device", "epochs", "steps", "best_epoch", "best_val_dice", "best_epoch_no_ema",
                 "best_val_dice_no_ema", "seconds", "stopped"),
    "zoo": ("run", "entry", "seed", "arch", "encoder", "params_m", "input_size", "epochs", "val_dice", "split", "n",
            "dice", "iou", "class_dice", "mdice", "train_minutes"),
    "postprocess": ("run", "split", "n", "tta", "chain", "dice", "class_dice", "mdice"),
    "speed": ("run", "kind", "setting", "threads", "metric", "value"),
}

TITLES = {
    "polyp": "Polyp segmentation (binary): every evaluation",
    "neopolyp": "NeoPolyp (neoplastic / non-neoplastic): every evaluation",
    "edd2020": "EDD2020 gastroscopy (multi-label): every evaluation",
    "training": "Training runs: best validation score",
    "zoo": "Model zoo and ablations: every entry on each test split",
    "postprocess": "Post-processing chains on a split",
    "speed": "Speed: latency, video, training throughput, load",
}

NOTES = {
    "polyp": "Per image at the original resolution, then the mean (`medseg-evaluate`); HD95 in pixels; "
             "`postprocess` [] is raw masks; `presence` is the lesion-present rule applied, if any.",
    "neopolyp": "`dice`/`iou`/`hd95`: lesion (any class against background), per image; `class_dice_*`: split-level "
                "(pixels summed over the split); `mdice`: mean over classes of per-image Dice.",
    "edd2020": "`threshold`: one value, or one per class as recorded with the weights; `class_dice_*` split-level.",
    "training": "Validation at the network's input resolution, as training selects; `seconds` of training.",
    "zoo": "One recipe and budget for every architecture (`studies/zoo.py`); `val_dice` is the training run's best.",
    "postprocess": "`medseg-calibrate --what postprocess`: each step alone and the full chain; lesion Dice per image, "
                   "split-level class Dice and per-image mean class Dice (multi-class models).",
    "speed": "Median latencies in milliseconds, throughputs per second, load in seconds; `threads` CPU threads.",
}

# Older multi-class evaluations named classes by index.
CLASS_ALIASES = {"class_dice_1": "class_dice_neoplastic", "class_dice_2": "class_dice_non-neoplastic"}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v) if v else "[]"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _evaluation_task(d: dict) -> str:
    labels = d.get("labels") or {}
    task = labels.get("task")
    names = labels.get("class_names") or []
    if task == "multilabel" or "class_dice_BE" in d:
        return "edd2020"
    if task == "multiclass" or "class_dice_neoplastic" in d or "class_dice_1" in d:
        return "neopolyp" if ("neoplastic" in names or not names) else "other"
    return "polyp"


def _presence(d: dict) -> str:
    rule = d.get("presence_rule")
    if not rule:
        return ""
    return f"{rule.get('score', 'mean')} >= {rule.get('threshold')}"


def rows_of(run: str, d) -> list[tuple[str, dict]]:
    """(table, row) pairs for one JSON document; [] when it is none of the known kinds."""
    if not isinstance(d, dict):
        return []
    if "dice" in d and "split" in d and "n" in d and ("per_image" in d or "hd95" in d):
        task = _evaluation_task(d)
        if task not in TABLES:
            return []
        row = {k: d.get(k) for k in TABLES[task]}
        for old, new in CLASS_ALIASES.items():
            if old in d and row.get(new) is None:
                row[new] = d[old]
        row.update(run=run, presence=_presence(d), tta=d.get("tta_sizes") or d.get("tta"))
        return [(task, row)]
    if "best_val_dice" in d and "config" in d:
        return [("training", {k: d.get(k) for k in TABLES["training"]} | {"run": run})]
    if isinstance(d.get("rows"), list) and "config" in d and all("entry" in r for r in d["rows"]):
        out = []
        for r in d["rows"]:
            base = {k: r.get(k) for k in TABLES["zoo"]} | {"run": run}
            for split, m in (r.get("test") or {"": {}}).items():
                out.append(("zoo", base | {k: m.get(k) for k in ("n", "dice", "iou", "class_dice", "mdice")}
                            | {"split": split}))
        return out
    if isinstance(d.get("table"), dict) and all(isinstance(v, dict) for v in d["table"].values()):
        out = []
        for chain, entry in d["table"].items():
            mean = entry.get("mean") or {}
            out.append(("postprocess", {"run": run, "split": d.get("split"), "n": d.get("n"), "tta": d.get("tta"),
                                        "chain": chain} | {k: mean.get(k) for k in ("dice", "class_dice", "mdice")}))
        return out
    return [("speed", r | {"run": run}) for r in _speed_rows(d)]


def _speed_rows(d: dict) -> list[dict]:
    threads = d.get("threads")
    if isinstance(d.get("rows"), list) and "repeats" in d:  # bench/latency.py
        return [{"kind": "latency", "setting": r["engine"] + (f", {r['image_size']} px" if r.get("image_size") else ""),
                 "threads": threads, "metric": m, "value": r[m]}
                for r in d["rows"] for m in ("forward_ms", "segmenter_ms") if r.get(m) is not None]
    if isinstance(d.get("speed"), list):  # bench/video.py
        return [{"kind": "video", "setting": f"{d.get('backend')} batch {r['batch_size']}", "threads": threads,
                 "metric": "frames_per_second", "value": r["frames_per_second"]} for r in d["speed"]]
    if "ours" in d and "plain" in d:  # bench/train_speed.py
        return [{"kind": "training", "setting": f"{name} loop, batch {d.get('batch')}, {d.get('size')} px",
                 "threads": threads, "metric": "images_per_s", "value": d[name]["images_per_s"]}
                for name in ("ours", "plain")]
    if "clients" in d and "p50_s" in d:  # bench/load.py
        setting = f"{d['clients']} clients, {d.get('workers')} workers"
        return [{"kind": "load", "setting": setting, "threads": d.get("workers"), "metric": m, "value": d[m]}
                for m in ("successes", "failures", "p50_s", "p95_s", "peak_rss_mb")]
    return []


def build(paths: list[Path]) -> tuple[dict[str, list[dict]], list[str]]:
    tables: dict[str, list[dict]] = {name: [] for name in TABLES}
    skipped = []
    for path in sorted(paths):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: {path}: not a readable JSON file ({exc})") from None
        pairs = rows_of(path.stem, doc)
        if not pairs:
            skipped.append(path.name)
        for table, row in pairs:
            tables[table].append(row)
    return tables, skipped


def write(tables: dict[str, list[dict]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in tables.items():
        if not rows:
            continue
        cols = TABLES[name]
        rows = sorted(rows, key=lambda r: tuple(_fmt(r.get(c)) for c in ("run", "entry", "seed", "split", "chain",
                                                                          "setting", "metric") if c in cols))
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in rows:
                w.writerow([_fmt(r.get(c)) for c in cols])
        md = [f"# {TITLES[name]}", "", NOTES[name], "",
              f"Generated by `python studies/results_tables.py` from `runs/results/*.json`; {len(rows)} rows.", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in cols) + " |" for r in rows]
        (out / f"{name}.md").write_text("\n".join(md) + "\n")
        written += [out / f"{name}.csv", out / f"{name}.md"]
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "results", help="folder of evaluation JSON")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="where the tables go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = sorted(args.runs.glob("*.json"))
    if not paths:
        print(f"error: no JSON files in {args.runs}", file=sys.stderr)
        return 1
    tables, skipped = build(paths)
    for path in write(tables, args.out):
        log.info("wrote %s", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in tables.items())
    log.info("%d JSON files: rows per table: %s; %d not tabled: %s", len(paths), counts, len(skipped),
             " ".join(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
