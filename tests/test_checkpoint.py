"""Training that survives being killed (medseg_core.checkpoint and the loop in medseg_core.training): atomic
checkpoints, ``--resume latest`` past a half-written one, NaN losses, and the data check before training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_training import tiny_args

from medseg_core import training
from medseg_core.checkpoint import MARKER, find_latest_checkpoint, list_checkpoints, save_checkpoint, unreadable_samples


class _FakeAccelerator:
    """What save_checkpoint uses of an Accelerator: one process, save_state writing a couple of files."""

    is_main_process = True

    def __init__(self, fail_after_files: int | None = None) -> None:
        self.fail_after_files = fail_after_files

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        for i, name in enumerate(["model.safetensors", "optimizer.bin", "random_states_0.pkl"]):
            if self.fail_after_files is not None and i >= self.fail_after_files:
                raise KeyboardInterrupt("killed while saving")
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"x" * 100)


def test_checkpoints_are_renamed_complete_and_the_old_one_goes_only_after(tmp_path):
    acc = _FakeAccelerator()
    for step in (2, 4, 6):
        final = save_checkpoint(acc, tmp_path, step, keep=2)
        assert (final / MARKER).is_file() and json.loads((final / MARKER).read_text())["step"] == step
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_4", "checkpoint_6"]
    assert not list(tmp_path.glob(".tmp-*"))
    # A kill in the middle of save_state: the new checkpoint never gets its final name, both old ones stay.
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_FakeAccelerator(fail_after_files=1), tmp_path, 8, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_4", "checkpoint_6"]
    assert find_latest_checkpoint(tmp_path).name == "checkpoint_6"


def test_resume_latest_skips_a_checkpoint_without_its_marker(tmp_path, caplog):
    save_checkpoint(_FakeAccelerator(), tmp_path / "checkpoints", 3)
    broken = tmp_path / "checkpoints" / "checkpoint_5"  # as an older writer killed mid-save would leave it
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"half")
    assert training.resolve_resume_path("latest", tmp_path).name == "checkpoint_3"
    assert "checkpoint_5" in caplog.text and "not completely written" in caplog.text
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint_3")
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        training.resolve_resume_path("latest", tmp_path)


def _nan_at(step: int):
    """A loss factory (build_loss's place) whose loss is NaN on the given call."""
    real = training.build_loss
    calls = {"n": 0}

    def build(*args, **kwargs):
        loss_fn = real(*args, **kwargs)

        def loss(outputs, target):
            calls["n"] += 1
            value = loss_fn(outputs, target)
            return value * float("nan") if calls["n"] == step else value

        return loss

    return build


def test_nan_loss_stops_the_run_naming_the_step(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "build_loss", _nan_at(2))
    with pytest.raises(SystemExit, match=r"loss is nan at step 2 \(epoch 1\)"):
        training.main(tiny_args(data_root, tmp_path / "stop", max_steps=3))


def test_nan_loss_can_skip_the_batch(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "build_loss", _nan_at(2))
    training.main(tiny_args(data_root, tmp_path / "skip", "--on-nan", "skip", max_steps=3))
    summary = json.loads((tmp_path / "skip" / "train_summary.json").read_text())
    assert summary["steps"] == 3
    from medseg_core import load_model

    model = load_model(tmp_path / "skip" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _copy_split(data_root, tmp_path, n=4):
    """A data root holding the first n training and 2 validation samples of the shared data (copied)."""
    from medseg_core.data import read_split

    root = tmp_path / "data"
    (root / "splits").mkdir(parents=True)
    for split, count in (("polyp-train", n), ("polyp-val", 2)):
        samples = read_split(data_root, split)[:count]
        for s in samples:
            for kind, path in (("images", s.image), ("masks", s.mask)):
                dest = root / s.id.split("/")[0] / kind / path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, dest)
        (root / "splits" / f"{split}.txt").write_text("\n".join(s.id for s in samples) + "\n")
    return root


def test_data_check_lists_every_unreadable_file_before_training(data_root, tmp_path):
    from medseg_core.data import read_split

    root = _copy_split(data_root, tmp_path)
    samples = read_split(root, "polyp-train")
    data = samples[1].image.read_bytes()
    samples[1].image.write_bytes(data[: len(data) // 3])  # truncated
    samples[2].mask.write_bytes(b"not a mask at all")
    problems = unreadable_samples(samples)
    assert len(problems) == 2
    assert problems[0].startswith(samples[1].id + ": image") and "cannot be decoded" in problems[0]
    assert problems[1].startswith(samples[2].id + ": mask") and "cannot be decoded" in problems[1]
    args = tiny_args(data_root, tmp_path / "run")
    args[args.index("--data.root") + 1] = str(root)
    with pytest.raises(SystemExit, match="2 unreadable file") as err:
        training.main(args)
    assert samples[1].id in str(err.value) and samples[2].id in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def _train_cmd(data_root, out, *extra):
    args = tiny_args(data_root, out, "--train.epochs", "3", "--checkpoint-every", "1", *extra, max_steps=1000)
    return [sys.executable, str(ROOT / "train" / "train.py"), *args]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_sigkill_mid_epoch_then_resume_latest_finishes_like_an_uninterrupted_run(data_root, tmp_path):
    """A real training run is SIGKILLed mid-epoch (after its 3rd of 6 steps), a half-written checkpoint is left
    where a kill mid-save would leave one, and ``--resume latest`` finishes the run: same step and epoch count as a
    run never interrupted, validation Dice within noise of it."""
    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(data_root, whole), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=300)
    reference = json.loads((whole / "train_summary.json").read_text())
    assert reference["steps"] == 6 and reference["epochs"] == 3

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(data_root, killed), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "checkpoint_3").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "train_summary.json").exists()
    done = [int(p.name.split("_")[1]) for p in list_checkpoints(killed / "checkpoints")]
    assert done and max(done) < 6, done
    # What a kill during save_state leaves: a temporary folder, and (older writers) a newer folder with no marker.
    (killed / "checkpoints" / ".tmp-checkpoint_99").mkdir()
    (killed / "checkpoints" / "checkpoint_99").mkdir()
    (killed / "checkpoints" / "checkpoint_99" / "model.safetensors").write_bytes(b"partial")

    resumed = subprocess.run(_train_cmd(data_root, killed, "--resume", "latest"), env=_env(), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint_99" in resumed.stderr and "not completely written" in resumed.stderr
    assert f"resumed from {killed / 'checkpoints' / f'checkpoint_{max(done)}'}" in resumed.stderr
    summary = json.loads((killed / "train_summary.json").read_text())
    assert (summary["steps"], summary["epochs"]) == (reference["steps"], reference["epochs"])
    print(f"uninterrupted: {reference['steps']} steps, val Dice {reference['best_val_dice']:.4f}; "
          f"killed after checkpoint_{max(done)} and resumed: {summary['steps']} steps, "
          f"val Dice {summary['best_val_dice']:.4f}")
    assert abs(summary["best_val_dice"] - reference["best_val_dice"]) < 0.25  # 6 steps from random weights: noisy
    assert np.isfinite(summary["best_val_dice"])
