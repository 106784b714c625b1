"""bench/zoo.py: the model-zoo comparison driver (one recipe, every model), run as a user runs it."""

import json

from conftest import run_script

from medseg_core.models import list_models


def test_every_registered_segmenter_is_an_entry(data_root):
    printed = run_script("bench/zoo.py", "--data", data_root, "--dry-run").stdout
    trained = {line.split("--model.arch ")[1].split()[0] for line in printed.splitlines() if "train/train.py" in line}
    assert trained == set(list_models()) - {"refiner"}
    ablation = run_script("bench/zoo.py", "--data", data_root, "--dry-run", "--ablation").stdout.splitlines()
    nodfi = [line for line in ablation if "train/train.py" in line and "dynasiam_nodfi" in line]
    assert len(nodfi) == 1 and nodfi[0].endswith("--model.dfi false")


def test_tdc_entry_keeps_the_step_budget(data_root):
    printed = run_script("bench/zoo.py", "--models", "unet_tdc", "--data", data_root, "--dry-run",
                         "--train.epochs", "3").stdout.splitlines()
    assert any("medseg_core.enhance" in line and "polyp-train" in line for line in printed)
    train = next(line for line in printed if "train/train.py" in line)
    n_train = len((data_root / "splits" / "polyp-train.txt").read_text().split())
    assert f"--max-steps {3 * (n_train // 8)}" in train and "--train.warmup_epochs 0.0625" in train


def test_a_tiny_zoo_run_trains_evaluates_and_tabulates(data_root, tmp_path):
    split = tmp_path / "two.txt"
    split.write_text("cvc-clinicdb/4\ncvc-clinicdb/5\n")
    args = ["--models", "unet", "emcad", "--data", data_root, "--out", tmp_path / "zoo",
            "--test-splits", split, "--json", tmp_path / "zoo.json", "--markdown", tmp_path / "z.md",
            "--model.input_size", "64", "--train.epochs", "1", "--train.max_train_samples", "8",
            "--train.max_val_samples", "4", "--train.batch_size", "4", "--data.cache_max_side", "96",
            "--model.encoder_weights", "random"]
    run_script("bench/zoo.py", *args)
    rows = json.loads((tmp_path / "zoo.json").read_text())["rows"]
    assert [r["entry"] for r in rows] == ["unet", "emcad"]
    for r in rows:
        assert r["steps"] == 2 and r["input_size"] == 64 and r["params_m"] > 0
        assert r["test"]["two"]["n"] == 2 and 0.0 <= r["test"]["two"]["dice"] <= 1.0
        assert "train/train.py" in r["commands"]["train"] and "--model.arch " + r["arch"] in r["commands"]["train"]
    table = (tmp_path / "z.md").read_text()
    assert table.startswith("| model |") and "| unet | Lite0, random init |" in table and "| emcad |" in table
    # A second call repeats nothing: the finished entries are only collected.
    mtime = (tmp_path / "zoo" / "unet" / "train_summary.json").stat().st_mtime
    assert "| unet |" in run_script("bench/zoo.py", *args).stdout
    assert (tmp_path / "zoo" / "unet" / "train_summary.json").stat().st_mtime == mtime
