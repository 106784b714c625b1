"""The lesion-free-frames study's combined table, from ``medseg-evaluate --json`` files.

    python studies/lesion_free_table.py runs/lesion_free/*.json --out docs/results/lesion_free

Each JSON is one model on one split (with or without the recorded presence rule, as ``--presence`` said). Rows: one
per JSON, with frame specificity and false-alarm frames (splits with lesion-free frames), per-lesion sensitivity,
false-positive regions per frame and mean Dice; plus, per model and rule, per-lesion sensitivity over test-kvasir and
test-clinicdb together (the target's pool). Writes ``OUT.csv`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from medseg_core.presence import PresenceRule, presence_metrics

COLUMNS = ("model", "rule", "split", "n", "lesion_free_frames", "false_alarm_frames", "frame_specificity",
           "truth_lesions", "lesion_sensitivity", "fp_regions_per_frame", "dice")


def row_of(result: dict) -> dict:
    rule = result.get("presence_rule")
    return {"model": Path(result["model"]).name, "rule": PresenceRule.from_config(rule).describe() if rule else "none",
            "split": result["split"], "n": result["n"],
            "lesion_free_frames": result.get("presence_lesion_free_frames", 0),
            "false_alarm_frames": result.get("presence_false_alarm_frames", ""),
            "frame_specificity": result.get("presence_frame_specificity", ""),
            "truth_lesions": result.get("presence_truth_lesions", 0),
            "lesion_sensitivity": result.get("presence_lesion_sensitivity", ""),
            "fp_regions_per_frame": result["presence_fp_regions_per_frame"], "dice": result["dice"]}


def pooled(results: list[dict], splits: tuple[str, ...]) -> list[dict]:
    """Per-lesion sensitivity over several splits together, per model and rule."""
    out, groups = [], {}
    for r in results:
        if r["split"] in splits:
            groups.setdefault((Path(r["model"]).name, json.dumps(r.get("presence_rule"))), []).append(r)
    for (model, rule_json), group in groups.items():
        if {g["split"] for g in group} != set(splits):
            continue
        rule = json.loads(rule_json)
        records = [row["presence"] for g in group for row in g["per_image"]]
        m = presence_metrics(records, PresenceRule.from_config(rule) if rule else None)
        out.append({"model": model, "rule": PresenceRule.from_config(rule).describe() if rule else "none",
                    "split": "+".join(splits), "n": len(records), "lesion_free_frames": m["lesion_free_frames"],
                    "false_alarm_frames": "", "frame_specificity": "", "truth_lesions": m["truth_lesions"],
                    "lesion_sensitivity": m["lesion_sensitivity"], "fp_regions_per_frame": m["fp_regions_per_frame"],
                    "dice": sum(row["dice"] for g in group for row in g["per_image"]) / len(records)})
    return out


def fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="medseg-evaluate --json files")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args()
    # medseg-evaluate --json files only: the --sweep / --plot data written beside them (X_sweep.json) is skipped.
    results = [r for r in (json.loads(Path(f).read_text()) for f in args.results)
               if isinstance(r, dict) and "model" in r and "split" in r]
    rows = [row_of(r) for r in results] + pooled(results, ("test-kvasir", "test-clinicdb"))
    rows.sort(key=lambda r: (r["model"], r["rule"] != "none", r["split"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
