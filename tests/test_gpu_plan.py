"""train/gpu_plan.py: the one GPU call of every pending study, run at a tiny size on the CPU (two of its jobs: a
training with its validation, and one entry of the EDD2020 study), brought back and merged as on the device."""

import json

import numpy as np
from conftest import load_script, run_script

from medseg_core import Segmenter


def test_the_gpu_plan_runs_tiny_on_the_cpu_and_comes_back_within_the_device_limits(data_root, tmp_path):
    out, runs, merged = tmp_path / "out", tmp_path / "runs", tmp_path / "merged"
    proc = run_script("train/gpu_plan.py", "run", "--tiny", "--out", out, "--runs", runs, "--data", data_root,
                      "--jobs", "neopolyp_s0", "edd_unet_s0", timeout=900)
    assert "neopolyp_s0: exit [0, 0]" in proc.stdout and "edd_unet_s0: exit [0]" in proc.stdout
    back = sorted(p.name for p in out.iterdir())
    assert back == ["edd2020.safetensors", "neopolyp.safetensors", "results.tar.gz"]
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    run_script("train/gpu_plan.py", "merge", out, "--runs", merged)
    chosen = json.loads((merged / "plan_chosen.json").read_text())
    assert chosen["edd2020"]["model"] == "edd2020_s0/unet/model"
    evaluation = json.loads((merged / "edd2020_s0" / "unet" / "eval" / "edd-test.json").read_text())
    assert evaluation["n"] == 4  # the tiny run packs four pairs of each split
    seg = Segmenter.from_pretrained(merged / chosen["neopolyp"]["model"], device="cpu")
    result = seg(np.zeros((80, 96, 3), np.uint8))
    assert result.mask.shape == (80, 96)
    assert json.loads((merged / "neopolyp_s0" / "eval_val.json").read_text())["n"] == 2


def test_the_plan_lists_every_pending_study():
    proc = run_script("train/gpu_plan.py", "list")
    for name in ("neopolyp_s0", "neopolyp_s1", "polyp_next", *(f"edd_{e}_s{s}" for s in (0, 1) for e in
                                                              ("unet", "unet_tdc", "dynasiam", "dynasiam_nodfi"))):
        assert f"{name} (" in proc.stdout
    assert "polyp-negative-train" in proc.stdout and "--train.dice_skip_absent true" in proc.stdout


def test_a_job_stopped_at_the_budget_stops_its_whole_tree_and_its_best_model_still_comes_back(tmp_path):
    import os
    import subprocess
    import sys

    plan = load_script("train/gpu_plan.py")
    # A job whose child starts a grandchild (as studies/zoo.py starts train/train.py): the budget stops both.
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text():
            break
        proc.poll()
        __import__("time").sleep(0.1)
    grandchild = int(pid_file.read_text())
    plan._stop_group(proc, grace=5)
    assert proc.poll() is not None
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        __import__("time").sleep(0.1)
    else:
        raise AssertionError("the grandchild outlived its job")
    # A run stopped before it wrote train_summary.json: its score comes from its log, its best model comes back.
    run = tmp_path / "runs" / "neopolyp_s0"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.safetensors").write_bytes(b"x")
    (run / "plan.log").write_text("x medseg.train: epoch 1/80: train loss 1.0, val dice 0.5, score 0.3100\n"
                                  "x medseg.train: epoch 2/80: train loss 0.9, val dice 0.6, score 0.4200\n"
                                  "x medseg.train: epoch 2, without EMA: val dice 0.9, score 0.9000\n")
    job = next(j for j in plan.PLAN if j.name == "neopolyp_s0")
    assert plan._best_in_group([job], tmp_path / "runs") == (run / "model", 0.42)
