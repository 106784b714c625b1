"""Every pending GPU study in one command on a remote GPU with a few minutes' budget (docs/gpu_runs.md), and the
same at a tiny size on the CPU, so that the command is known to run before a GPU is there.

    python train/gpu_plan.py list                            # the jobs and their exact commands
    python train/gpu_plan.py pack --out carry                # here: data, encoders and wheels for the call
    python train/gpu_plan.py run --carry carry --out OUT_DIR # there: set up, run every job side by side, collect
    python train/gpu_plan.py run --tiny --out /tmp/plan      # here: every job at a tiny size on the CPU (4 pairs
                                                             # of each split packed at 96 px, 2 steps a training)
    python train/gpu_plan.py merge BACK_DIR --runs runs/gpu  # here: the results back into run folders

The jobs (``PLAN``), all started at once and stopped at ``--budget-s``:

- ``neopolyp_s0``, ``neopolyp_s1``: the NeoPolyp Lite2 recipe with the lever of the EDD2020 study
  (docs/studies/edd2020-rare-classes.md: the Dice term over the batch, classes absent from it skipped), two seeds;
  validation on ``neopolyp-full-val``.
- ``edd_<entry>_s0``, ``edd_<entry>_s1``: the EDD2020 four-entry study (U-Net, U-Net on the TDC-enriched set,
  DynaSiam, DynaSiam without DFI: ``studies/zoo.py``'s ablation, each with the same lever, one job an entry, the
  entries of a seed in one folder ``runs/gpu/edd2020_s<seed>``) at 352 px and a real schedule, two seeds, each
  entry evaluated on ``edd-test`` at 0.5 and at thresholds chosen on ``edd-val``; ``studies/zoo.py --collect
  --ablation --out runs/gpu/edd2020_s0`` tabulates a seed.
- ``polyp_next``: the polyp default's next recipe, the shipped Lite2 GPU recipe from ImageNet with a quarter of
  every batch drawn from polyp-free frames, selected on polyp-val together with polyp-negative-val.

``run`` writes at most 8 files under ``--out`` (what the remote machine sends back): ``results.tar.gz``
(every run's summary, model card, config, evaluation JSON and log) and, for each group, the weights of the run
that validated best, in fp16 (``<group>.safetensors``). ``merge`` puts them back under ``runs/gpu/``, where
``train/evaluate.py`` and ``train/store_fp16.py`` take over. Nothing here decides what ships: each study's rule,
written before the run, does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = "python"

# What may travel to the remote machine and come back (docs/gpu_runs.md).
CARRY_LIMIT = 60 * 2**20
BACK_FILES, BACK_FILE_LIMIT = 8, 16 * 2**20

# The lever carried from the EDD2020 study to NeoPolyp (see that study's table).
LEVER = ["--train.batch_dice", "true", "--train.dice_skip_absent", "true"]

# The splits each job reads: what `pack` writes into the carried data folder.
PACK_SPLITS = ["neopolyp-full-train", "neopolyp-full-val", "edd-train", "edd-val", "edd-test",
               "polyp-train", "polyp-val", "polyp-negative-train", "polyp-negative-val"]
ENCODERS = ["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
WHEELS = ["albumentations==2.0.8", "albucore", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "stringzilla", "simsimd", "timm==1.0.31"]

# Overrides that make every training tiny (the CPU smoke run): a few samples, 64 px, two steps.
TINY = ["--max-steps", "2", "--model.input_size", "64", "--data.cache_max_side", "96", "--train.batch_size", "2",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.num_workers", "0",
        "--train.epochs", "1"]


@dataclass
class Job:
    """One training (``train/train.py``) followed by its evaluations, or one ``studies/zoo.py`` study (which trains
    and evaluates its entries itself). ``group``: the runs among which the best on validation comes back."""

    name: str
    group: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    val_splits: list[str] = field(default_factory=list)
    zoo: bool = False

    def run_dir(self, runs: Path) -> Path:
        return runs / self.name

    def commands(self, runs: Path, data: str, tiny: bool) -> list[list[str]]:
        extra = [*self.overrides, *(TINY if tiny else [])]
        if self.zoo:  # studies/zoo.py hands what it does not know (--seed, overrides) to every train/train.py run
            return [[PY, "studies/zoo.py", "--config", self.recipe, "--data", data, "--test-splits", "edd-test",
                     "--tune-thresholds", "--out", str(runs / f"{self.group}_s{self.seed}"), "--seed", str(self.seed),
                     *extra]]
        out = self.run_dir(runs)
        train = [PY, "train/train.py", "--config", self.recipe, "--output-dir", str(out), "--seed", str(self.seed),
                 "--no-progress", "--skip-data-check", "--data.root", data, *extra]
        evaluate = [[PY, "train/evaluate.py", "--model", str(out / "model"), "--data", data,
                     "--split", *self.val_splits, *(["--limit", "2"] if tiny else []),
                     "--json", str(out / "eval_val.json")]]
        return [train, *evaluate]


EDD_ENTRIES = ["unet", "unet_tdc", "dynasiam", "dynasiam_nodfi"]  # studies/zoo.py's ablation, one job an entry
EDD_BUDGET = ["--model.input_size", "352", "--data.cache_max_side", "448", "--train.epochs", "100", *LEVER]

PLAN = [
    *(Job(f"neopolyp_s{seed}", "neopolyp", "train/configs/unet_lite2_neopolyp_full_gpu.yaml",
          [*LEVER, "--train.epochs", "80", "--train.num_workers", "2"], seed, ["neopolyp-full-val"])
      for seed in (0, 1)),
    *(Job(f"edd_{entry}_s{seed}", "edd2020", "train/configs/zoo_edd2020.yaml", ["--models", entry, *EDD_BUDGET],
          seed, zoo=True) for seed in (0, 1) for entry in EDD_ENTRIES),
    Job("polyp_next", "polyp", "train/configs/unet_lite2_polyp_gpu.yaml",
        ["--name", "unet_lite2.polyp_next", "--data.mix_splits", "{polyp-negative-train: 0.25}",
         "--data.val_split", "[polyp-val, polyp-negative-val]", "--train.epochs", "60", "--train.num_workers", "2"],
        0, ["polyp-val", "polyp-negative-val"]),
]


def _run_job(job: Job, runs: Path, data: str, tiny: bool, deadline: float, env: dict[str, str],
             results: dict[str, dict]) -> None:
    log = job.run_dir(runs) / "plan.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    record = results[job.name] = {"commands": [], "exit": [], "seconds": 0.0}
    started = time.time()
    with open(log, "a") as handle:
        for cmd in job.commands(runs, data, tiny):
            record["commands"].append(shlex.join(cmd))
            left = deadline - time.time()
            if left <= 5:
                record["exit"].append("not started: out of time")
                break
            # Its own process group: at the budget the whole tree stops (studies/zoo.py's training runs too).
            proc = subprocess.Popen([sys.executable, *cmd[1:]], cwd=ROOT, env=env, stdout=handle,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                record["exit"].append(proc.wait(timeout=left))
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                record["exit"].append("stopped at the budget")
                break
    record["seconds"] = round(time.time() - started, 1)


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT to the job's process group, then SIGKILL to what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


_EPOCH_SCORE = re.compile(r"epoch \d+/\d+: .*\bscore (-?[0-9.]+|nan)")


def _run_score(run: Path) -> float:
    """A run's best validation score: from its summary, or, for a run stopped at the budget before it wrote one,
    the best epoch line of its logs (the model folder holds that epoch's weights)."""
    summary = run / "train_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("best_val_dice", -1.0)
    scores = [float(m.group(1)) for log in run.glob("*.log") for m in _EPOCH_SCORE.finditer(log.read_text())]
    return max((s for s in scores if s == s), default=-1.0)


def _best_in_group(jobs: list[Job], runs: Path) -> tuple[Path, float] | None:
    """The model folder that validated best among a group's runs (a zoo study holds one run per entry)."""
    best: tuple[Path, float] | None = None
    for job in jobs:
        run = job.run_dir(runs) if not job.zoo else runs / f"{job.group}_s{job.seed}" / job.overrides[1]
        if not (run / "model" / "model.safetensors").is_file():
            continue
        score = _run_score(run)
        if best is None or score > best[1]:
            best = (run / "model", score)
    return best


def collect(runs: Path, out: Path, jobs: list[Job], results: dict[str, dict]) -> list[Path]:
    """``results.tar.gz`` with every small file of every run, and the best weights of each group in fp16."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    (runs / "plan_results.json").write_text(json.dumps(results, indent=2))
    written = []
    chosen = {}
    for group in dict.fromkeys(j.group for j in jobs):
        best = _best_in_group([j for j in jobs if j.group == group], runs)
        if best is None:
            continue
        state = {k: (v.half() if v.is_floating_point() else v)
                 for k, v in load_file(best[0] / "model.safetensors").items()}
        if not all(bool(torch.isfinite(v.float()).all()) for v in state.values()):
            continue  # a model with a non-finite tensor never comes back to be shipped
        path = out / f"{group}.safetensors"
        save_file(state, path, metadata={"format": "pt", "run": str(best[0].relative_to(runs))})
        if path.stat().st_size > BACK_FILE_LIMIT:
            path.unlink()
            continue
        chosen[group] = {"model": str(best[0].relative_to(runs)), "val_score": best[1]}
        written.append(path)
    (runs / "plan_chosen.json").write_text(json.dumps(chosen, indent=2))
    tar_path = out / "results.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for path in sorted(runs.rglob("*")):
            small = path.suffix in (".json", ".md", ".log", ".txt", ".yaml") or path.name.startswith("events.out")
            if path.is_file() and small and "tiny_data" not in path.parts and path.stat().st_size < 4 * 2**20:
                tar.add(path, arcname=str(path.relative_to(runs)))
    written.append(tar_path)
    if len(written) > BACK_FILES or any(p.stat().st_size > BACK_FILE_LIMIT for p in written):
        raise SystemExit(f"gpu_plan.py: {len(written)} files to bring back, more or larger than the device allows")
    return written


def setup(carry: Path) -> dict[str, str]:
    """Install the carried wheels into /tmp/site and restore the encoders there; the environment for the jobs."""
    site = Path("/tmp/site")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if (carry / "whl").is_dir():
        wheels = sorted(str(p) for p in (carry / "whl").glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(site), *wheels], check=True)
    if (carry / "enc").is_dir():
        env["PYTHONPATH"] = f"{site}:{ROOT}"
        subprocess.run([sys.executable, "train/remote.py", "restore-encoders", str(carry / "enc"), str(site)],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    if site.is_dir():
        env["PYTHONPATH"] = f"{site}:{ROOT}"
    return env


def run(args: argparse.Namespace) -> int:
    jobs = [j for j in PLAN if not args.jobs or j.name in args.jobs]
    carry = Path(args.carry) if args.carry else None
    env = setup(carry) if carry else {**os.environ}
    if args.tiny:
        env["OMP_NUM_THREADS"] = "1"
    data = str(carry / "data") if carry and (carry / "data").is_dir() else args.data
    runs = Path(args.runs)
    if args.tiny:  # a few pairs of every split, 96 px: the packing is exercised too, and every job is quick
        tiny = runs / "tiny_data"
        subprocess.run([sys.executable, "train/pack_data.py", "--data-root", data, "--splits", *PACK_SPLITS,
                        "--max-side", "96", "--limit", "4", "--out", str(tiny)], cwd=ROOT, check=True,
                       stderr=subprocess.DEVNULL)
        data = str(tiny.resolve())
    deadline = time.time() + args.budget_s
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=_run_job, args=(j, runs, data, args.tiny, deadline, env, results))
               for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for claim in runs.rglob(".claim"):  # studies/zoo.py's claims of entries stopped at the budget
        claim.unlink()
    written = collect(runs, Path(args.out), jobs, results)
    for name, r in results.items():
        print(f"{name}: exit {r['exit']} in {r['seconds']} s")
    for path in written:
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0 if all(all(e == 0 for e in r["exit"]) for r in results.values()) else 1


def pack(args: argparse.Namespace) -> int:
    out = Path(args.out)
    steps = [[PY, "train/pack_data.py", "--data-root", args.data, "--splits", *PACK_SPLITS, "--max-side", "352",
              "--quality", str(args.quality), "--out", str(out / "data")],
             [PY, "train/remote.py", "pack-encoders", str(out / "enc"), "--names", *ENCODERS]]
    if not args.no_wheels:
        steps.append([PY, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                      "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "-d",
                      str(out / "whl"), *WHEELS])
    for cmd in steps:
        print("$", shlex.join(cmd), flush=True)
        subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB (the call carries at most {CARRY_LIMIT / 2**20:.0f} MiB beside the code)")
    return 0 if size <= CARRY_LIMIT else 1


def merge(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    src, runs = Path(args.back_dir), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src / "results.tar.gz") as tar:
        tar.extractall(runs, filter="data")
    chosen = json.loads((runs / "plan_chosen.json").read_text())
    for group, info in chosen.items():
        state = {k: (v.float() if v.is_floating_point() else v)
                 for k, v in load_file(src / f"{group}.safetensors").items()}
        save_file(state, runs / info["model"] / "model.safetensors", metadata={"format": "pt"})
        print(f"{group}: {runs / info['model']} (validation score {info['val_score']:.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the jobs and their commands")
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("pack", help="data, encoders and wheels for the call, into a git-ignored folder")
    p.add_argument("--out", default="carry")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality of the packed images")
    p.add_argument("--no-wheels", action="store_true", help="skip the wheels (a machine that has the packages)")
    p = sub.add_parser("run", help="every job side by side, then collect under --out")
    p.add_argument("--out", required=True, help="where the files to bring back go (the remote machine's output folder)")
    p.add_argument("--carry", default=None, help="the folder written by pack (data, enc, whl)")
    p.add_argument("--data", default="../shared/data", help="the data folder when nothing is carried")
    p.add_argument("--runs", default="runs/gpu", help="where the runs write")
    p.add_argument("--budget-s", type=float, default=510, help="stop every job after this many seconds")
    p.add_argument("--tiny", action="store_true", help="every training at a tiny size (a CPU smoke run)")
    p.add_argument("--jobs", nargs="+", default=None, choices=[j.name for j in PLAN], help="only these jobs")
    p = sub.add_parser("merge", help="the files a call brought back, into run folders")
    p.add_argument("back_dir", help="the folder holding the files the remote run wrote to --out")
    p.add_argument("--runs", default="runs/gpu")
    args = parser.parse_args(argv)
    if args.command == "list":
        for job in PLAN:
            print(f"{job.name} ({job.group}):")
            for cmd in job.commands(Path("runs/gpu"), "carry/data", args.tiny):
                print("  $", shlex.join(cmd))
        return 0
    return {"pack": pack, "run": run, "merge": merge}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
