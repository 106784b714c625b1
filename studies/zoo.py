"""Train every model with one recipe and the same budget, evaluate each on the test splits, print the table.

    python studies/zoo.py                                   # every registered model (train, evaluate, table)
    python studies/zoo.py --models unet pranet              # some of them
    python studies/zoo.py --ablation                        # the TDC-Enhance / DynaSiam ablation (4 entries)
    python studies/zoo.py --collect                         # no training: the table of what runs/zoo holds
    python studies/zoo.py --train.epochs 20 --model.input_size 352    # a bigger budget (e.g. on a GPU), all alike

Each entry is one ``train/train.py`` run of ``train/configs/zoo_polyp.yaml`` (train on ``polyp-train``, best epoch
on ``polyp-val``) followed by ``train/evaluate.py`` on every test split; the exact commands are printed and stored
with the results, so any row can be re-run by hand. Models that take a timm encoder get the ImageNet
EfficientNet-Lite0 (the one set of ImageNet weights reachable offline); DDANet, the ASPP net and FCT have their own
encoders and start from random weights. Two more entries make the DynaSiam ablation: ``unet_tdc`` (a single-path
U-Net trained on the TDC-enriched training set, written by ``python -m medseg_core.enhance``) and ``dynasiam_nodfi``;
``unet_seed004`` is U-Net with the NeoPolyp reference design's optimiser and schedule (Adam, lr x0.6 in steps,
:data:`SEED004_TRAIN`) at this recipe's budget.

Finished runs are not repeated: an entry whose model and evaluations exist is only collected. Several copies of
this script may run at once (e.g. one per CPU core): each entry is claimed by one of them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LITE0 = ["--model.encoder", "tf_efficientnet_lite0", "--model.encoder_weights", "imagenet"]
ABLATION = ["unet", "unet_tdc", "dynasiam", "dynasiam_nodfi"]
# The NeoPolyp reference design's (seed 004) optimiser and schedule for entry unet_seed004: Adam with weight decay
# 1e-4, the learning rate x0.6 every 5 of its 24 epochs (ExponentialLR stepped per 5 epochs).
SEED004_TRAIN = {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0001, "schedule": "exponential", "gamma": 0.6,
                 "step_epochs": 5, "epochs": 24}
OPTIMISER_KEYS = ("optimizer", "lr", "weight_decay", "schedule", "gamma", "step_epochs")
# What a row keeps of each evaluation; multi-class and multi-label models add mdice / miou and the split-level
# class_dice_<class> (and their mean, class_dice).
TEST_KEYS = ("n", "dice", "iou", "accuracy", "precision", "recall", "hd95", "ms_per_image", "mdice", "miou")


def entries(tdc_root: Path) -> dict[str, dict[str, Any]]:
    """Every comparable entry: its architecture and the overrides that make it."""
    from medseg_core.models import get_model_class, list_models

    out: dict[str, dict[str, Any]] = {}
    for name in list_models():
        if not get_model_class(name).info.segments_images:  # helpers, e.g. the refiner (image + probability map)
            continue
        takes_encoder = "encoder" in inspect.signature(get_model_class(name).__init__).parameters
        out[name] = {"arch": name, "overrides": LITE0 if takes_encoder else []}
    out["unet_tdc"] = {"arch": "unet", "data_root": str(tdc_root), "overrides": LITE0}
    out["dynasiam_nodfi"] = {"arch": "dynasiam", "overrides": [*LITE0, "--model.dfi", "false"]}
    out["unet_seed004"] = {"arch": "unet", "optimiser_from": SEED004_TRAIN, "overrides": LITE0}
    return out


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description="Model-zoo comparison: every model trained with one recipe and budget "
                                "(train/configs/zoo_polyp.yaml), evaluated on the test splits. Any other "
                                "--section.key value is passed to every train/train.py run.")
    p.add_argument("--models", nargs="+", default=None, help="entries to run (default: every registered model)")
    p.add_argument("--ablation", action="store_true", help=f"the DynaSiam ablation entries: {' '.join(ABLATION)}")
    p.add_argument("--config", default="train/configs/zoo_polyp.yaml", help="the one recipe")
    p.add_argument("--data", default="../shared/data", help="dataset root holding splits/")
    p.add_argument("--test-splits", nargs="+", default=["test-kvasir", "test-clinicdb", "test-polypgen"])
    p.add_argument("--out", default="runs/zoo", help="one folder per entry: the run, its log and evaluations")
    p.add_argument("--collect", action="store_true", help="train nothing; tabulate the finished entries")
    p.add_argument("--tune-thresholds", action="store_true",
                   help="multi-label recipes: also choose per-class thresholds on the validation split "
                        "(medseg-calibrate --what thresholds --record) and evaluate the test splits with them")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--json", default=None, help="write the table (and the commands) to this JSON file")
    p.add_argument("--markdown", default=None, help="write the table as Markdown to this file")
    return p.parse_known_args(argv)


def commands(name: str, entry: dict[str, Any], args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    run_dir = Path(args.out) / name
    train = ["python", "train/train.py", "--config", args.config, "--output-dir", str(run_dir), "--no-progress",
             "--name", f"zoo.{name}", "--model.arch", entry["arch"], "--data.root", entry.get("data_root", args.data),
             *entry["overrides"], *extra]
    if "data_root" in entry:
        train += _same_budget(args, extra)
    if "optimiser_from" in entry:
        train += _optimiser_of(entry["optimiser_from"], args, extra)
    def evaluate(suffix: str, threshold: list[str]) -> dict[str, list[str]]:
        return {split: ["python", "train/evaluate.py", "--model", str(run_dir / "model"), "--data", args.data,
                        "--split", split, *threshold, "--json",
                        str(run_dir / "eval" / f"{Path(split).stem}{suffix}.json")] for split in args.test_splits}

    # Raw evaluation at threshold 0.5 even once per-class thresholds are recorded in the model's config.json.
    cmds: dict[str, Any] = {"train": train, "evaluate": evaluate("", ["--threshold", "0.5"])}
    if args.tune_thresholds:
        cmds["thresholds"] = ["python", "-m", "medseg_core.calibrate", "--what", "thresholds", "--model",
                              str(run_dir / "model"), "--data", args.data, "--split", _splits(args, extra)[1],
                              "--record", "--no-progress", "--json", str(run_dir / "eval" / "thresholds.json")]
        cmds["evaluate_thresholds"] = evaluate("_thresholds", [])
    return cmds


def _after_training(cmds: dict[str, Any]) -> list[list[str]]:
    """The commands that follow training, in order, each writing the JSON named after its ``--json``."""
    return [*cmds["evaluate"].values(), *([cmds["thresholds"]] if "thresholds" in cmds else []),
            *cmds.get("evaluate_thresholds", {}).values()]


def _output(cmd: list[str]) -> Path:
    return Path(cmd[cmd.index("--json") + 1])


def _same_budget(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Overrides that hold a run on the 4x larger TDC-enriched set to the steps (and warm-up steps) of the others."""
    from medseg_core.data import read_split

    cfg = _recipe(args, extra)
    t = cfg["train"]
    steps = int(t["epochs"] * (len(read_split(args.data, cfg["data"]["train_split"])) // t["batch_size"]))
    views = 4  # original + texture + detail + colour of every image
    return ["--max-steps", str(steps), "--train.warmup_epochs", f"{t['warmup_epochs'] / views:g}"]


def _optimiser_of(theirs: dict[str, Any], args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Overrides that train with another recipe's optimiser and learning-rate schedule (its ``train`` keys), its step
    schedule squeezed into this budget: as many lr steps, at the same fractions of the run, as in its own epochs."""
    budget = _recipe(args, extra)["train"]["epochs"]
    values = {k: theirs[k] for k in OPTIMISER_KEYS}
    values["step_epochs"] = theirs["step_epochs"] * budget / theirs["epochs"]
    return [arg for k, v in values.items() for arg in (f"--train.{k}", f"{v:g}" if isinstance(v, float) else str(v))]


def _recipe(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """The one recipe after the overrides among ``extra``, told apart from ``train.py``'s own options (``--seed``,
    ``--max-steps``, ...) by ``train.py``'s own parser."""
    from medseg_core.commands import parse_train_args
    from medseg_core.config import load_config

    overrides = parse_train_args(["--config", str(ROOT / args.config), *extra]).overrides
    return load_config(ROOT / args.config, overrides)


def _splits(args: argparse.Namespace, extra: list[str]) -> tuple[str, str]:
    """The recipe's training and validation splits (after any overrides)."""
    data = _recipe(args, extra)["data"]
    return data["train_split"], data["val_split"]


def tdc_commands(args: argparse.Namespace, extra: list[str], tdc_root: Path) -> list[list[str]]:
    """The TDC-enriched training set (original + 3 views of every training image) and the original validation set."""
    train_split, val_split = _splits(args, extra)
    return [["python", "-m", "medseg_core.enhance", "--data-root", args.data, "--split", train_split,
             "--out", str(tdc_root), "--no-progress"],
            ["python", "-m", "medseg_core.enhance", "--data-root", args.data, "--split", val_split,
             "--views", "original", "--out", str(tdc_root), "--no-progress"]]


def _run(cmd: list[str], log_file: Path) -> None:
    print("  $", shlex.join(cmd), flush=True)
    with open(log_file, "a") as log:
        exe = [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd
        done = subprocess.run(exe, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {done.returncode}); see {log_file}")


def _claim(run_dir: Path) -> bool:
    """True for the one process that may train this entry."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(run_dir / ".claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def run_entry(name: str, entry: dict[str, Any], cmds: dict[str, Any], args: argparse.Namespace,
              extra: list[str], tdc_root: Path) -> None:
    run_dir = Path(args.out) / name
    if (run_dir / "train_summary.json").is_file() and all(_output(c).is_file() for c in _after_training(cmds)):
        return
    if not _claim(run_dir):
        print(f"{name}: claimed by another process (remove {run_dir / '.claim'} if none runs)", flush=True)
        return
    try:
        log_file = run_dir / "zoo.log"
        print(f"{name}:", flush=True)
        if "data_root" in entry and not (tdc_root / "splits" / f"{_splits(args, extra)[1]}.txt").is_file():
            for cmd in tdc_commands(args, extra, tdc_root):
                _run(cmd, log_file)
        if not (run_dir / "train_summary.json").is_file():
            _run(cmds["train"], log_file)
        for cmd in _after_training(cmds):
            if not _output(cmd).is_file():
                _run(cmd, log_file)
    finally:
        (run_dir / ".claim").unlink(missing_ok=True)


def collect(name: str, entry: dict[str, Any], cmds: dict[str, Any], args: argparse.Namespace) -> dict | None:
    run_dir = Path(args.out) / name
    summary_file = run_dir / "train_summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    config = json.loads((run_dir / "model" / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(run_dir / "model" / "model.safetensors", "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    if "encoder" in config:  # what the run really used, after any overrides
        weights = "ImageNet" if config.get("encoder_weights") == "imagenet" else "random init"
        encoder = f"{config['encoder'].replace('tf_efficientnet_lite', 'Lite')}, {weights}"
    else:
        encoder = "own, random init"
    train = cmds["train"]
    seed = int(train[train.index("--seed") + 1]) if "--seed" in train else 0
    row: dict[str, Any] = {"entry": name, "seed": seed, "arch": entry["arch"], "encoder": encoder,
                           "params_m": params / 1e6, "input_size": config.get("input_size"),
                           "steps": summary["steps"], "epochs": summary["epochs"],
                           "best_epoch": summary["best_epoch"], "val_dice": summary["best_val_dice"],
                           "train_minutes": summary["seconds"] / 60, "device": summary.get("device"),
                           "commands": {"train": shlex.join(cmds["train"]),
                                        **{s: shlex.join(c) for s, c in cmds["evaluate"].items()}},
                           "test": {}}
    if "thresholds" in cmds and _output(cmds["thresholds"]).is_file():
        row["commands"]["thresholds"] = shlex.join(cmds["thresholds"])
        row["thresholds"] = json.loads(_output(cmds["thresholds"]).read_text())["thresholds"]
        row["test_thresholds"] = {}
    for key, evaluations in (("test", cmds["evaluate"]), ("test_thresholds", cmds.get("evaluate_thresholds", {}))):
        for split, cmd in evaluations.items():
            if key in row and _output(cmd).is_file():
                res = json.loads(_output(cmd).read_text())
                row[key][Path(split).stem] = {k: v for k, v in res.items()
                                              if k in TEST_KEYS or k.startswith("class_dice")}
    return row


def markdown_classes(rows: list[dict[str, Any]], splits: list[str], key: str = "test") -> str:
    """The table of multi-class / multi-label entries: a line per entry and test split, the lesion metrics (any class
    against background), mDice (mean per-image Dice over classes) and the split-level Dice of every class; ``key``
    ``test_thresholds`` for the evaluations at the per-class thresholds chosen on the validation split."""
    classes = list(dict.fromkeys(k[len("class_dice_"):] for r in rows for t in r["test"].values()
                                 for k in t if k.startswith("class_dice_")))
    head = ["entry", "seed", "split", "lesion Dice", "IoU", "acc", "mDice", *classes, "class Dice", "val score",
            "steps", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for s in (Path(s).stem for s in splits):
            t = r.get(key, {}).get(s)
            if t is None:
                continue
            cells = [r["entry"], str(r.get("seed", 0)), s,
                     *[f"{t[k]:.4f}" if k in t else "-" for k in
                       ("dice", "iou", "accuracy", "mdice", *[f"class_dice_{c}" for c in classes], "class_dice")],
                     f"{r['val_dice']:.4f}", str(r["steps"]), f"{r['train_minutes']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], splits: list[str], ablation: bool = False) -> str:
    if any(k.startswith("class_dice") for r in rows for t in r["test"].values() for k in t):
        table = markdown_classes(rows, splits)
        if any(r.get("test_thresholds") for r in rows):
            table += ("\n\nAt per-class thresholds chosen on the validation split (medseg-calibrate --what thresholds):\n\n"
                      + markdown_classes(rows, splits, "test_thresholds"))
        return table
    splits = [Path(s).stem for s in splits]
    short = {s: s.replace("test-", "") for s in splits}
    if ablation:
        head = ["entry", *[f"{short[s]} {m}" for s in splits for m in ("Dice", "mIoU", "acc")], "mean Dice"]
    else:
        head = ["model", "encoder", "params M", "val Dice", *[f"{short[s]} Dice / IoU" for s in splits],
                "mean Dice", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        test = r["test"]
        mean = sum(test[s]["dice"] for s in splits if s in test) / max(1, sum(s in test for s in splits))
        if ablation:
            cells = [r["entry"], *[f"{test[s][m]:.4f}" if s in test else "-" for s in splits
                                   for m in ("dice", "iou", "accuracy")], f"{mean:.4f}"]
        else:
            cells = [r["entry"], r["encoder"], f"{r['params_m']:.2f}", f"{r['val_dice']:.4f}",
                     *[f"{test[s]['dice']:.4f} / {test[s]['iou']:.4f}" if s in test else "-" for s in splits],
                     f"{mean:.4f}", f"{r['train_minutes']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args, extra = parse_args(argv)
    tdc_root = Path(args.out) / f"{_splits(args, extra)[0]}-tdc"
    known = entries(tdc_root)
    # By default every registered model; the variants (unet_tdc, dynasiam_nodfi, unet_seed004) only when named.
    names = ABLATION if args.ablation else (args.models or [n for n, e in known.items() if e["arch"] == n])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown entries {unknown}; known: {', '.join(known)}")
    all_cmds = {n: commands(n, known[n], args, extra) for n in names}
    if args.dry_run:
        for n in names:
            if "data_root" in known[n]:
                for cmd in tdc_commands(args, extra, tdc_root):
                    print(shlex.join(cmd))
            print(shlex.join(all_cmds[n]["train"]))
            for cmd in _after_training(all_cmds[n]):
                print(shlex.join(cmd))
        return []
    if not args.collect:
        for n in names:
            run_entry(n, known[n], all_cmds[n], args, extra, tdc_root)
    rows = [r for n in names if (r := collect(n, known[n], all_cmds[n], args)) is not None]
    if not rows:
        print("nothing finished yet")
        return rows
    table = markdown(rows, args.test_splits, ablation=args.ablation)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": args.config, "overrides": extra, "rows": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
