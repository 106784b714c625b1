"""train/gpu_plan.py: the one GPU call of every pending study, run at a tiny size on the CPU (two of its jobs: a
training with its validation, and one entry of the EDD2020 study), brought back and merged as on the device."""

import json

import numpy as np
from conftest import run_script

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
