"""bench/zoo.py: the model-zoo comparison driver (one recipe, every model), on a tiny real run."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import zoo  # noqa: E402

from medseg_core.models import list_models  # noqa: E402


def test_every_registered_segmenter_is_an_entry(tmp_path):
    entries = zoo.entries(tmp_path / "tdc")
    assert set(entries) == (set(list_models()) - {"refiner"}) | {"unet_tdc", "dynasiam_nodfi"}
    assert entries["unet"]["overrides"] == zoo.LITE0 and entries["fct"]["overrides"] == []
    assert entries["dynasiam_nodfi"]["overrides"][-2:] == ["--model.dfi", "false"]


def test_tdc_entry_keeps_the_step_budget(data_root, capsys):
    zoo.main(["--models", "unet_tdc", "--data", str(data_root), "--dry-run", "--train.epochs", "3"])
    printed = capsys.readouterr().out.splitlines()
    assert any("medseg_core.enhance" in line and "polyp-train" in line for line in printed)
    train = next(line for line in printed if "train/train.py" in line)
    n_train = len((data_root / "splits" / "polyp-train.txt").read_text().split())
    assert f"--max-steps {3 * (n_train // 8)}" in train and "--train.warmup_epochs 0.0625" in train


def test_a_tiny_zoo_run_trains_evaluates_and_tabulates(data_root, tmp_path, capsys):
    split = tmp_path / "two.txt"
    split.write_text("cvc-clinicdb/4\ncvc-clinicdb/5\n")
    args = ["--models", "unet", "emcad", "--data", str(data_root), "--out", str(tmp_path / "zoo"),
            "--test-splits", str(split), "--json", str(tmp_path / "zoo.json"), "--markdown", str(tmp_path / "z.md"),
            "--model.input_size", "64", "--train.epochs", "1", "--train.max_train_samples", "8",
            "--train.max_val_samples", "4", "--train.batch_size", "4", "--data.cache_max_side", "96",
            "--model.encoder_weights", "random"]
    rows = zoo.main(args)
    assert [r["entry"] for r in rows] == ["unet", "emcad"]
    for r in rows:
        assert r["steps"] == 2 and r["input_size"] == 64 and r["params_m"] > 0
        assert r["test"]["two"]["n"] == 2 and 0.0 <= r["test"]["two"]["dice"] <= 1.0
        assert "train/train.py" in r["commands"]["train"] and "--model.arch " + r["arch"] in r["commands"]["train"]
    saved = json.loads((tmp_path / "zoo.json").read_text())
    assert [r["entry"] for r in saved["rows"]] == ["unet", "emcad"]
    table = (tmp_path / "z.md").read_text()
    assert table.startswith("| model |") and "| unet | Lite0, random init |" in table and "| emcad |" in table
    # A second call repeats nothing: the finished entries are only collected.
    mtime = (tmp_path / "zoo" / "unet" / "train_summary.json").stat().st_mtime
    assert [r["entry"] for r in zoo.main(args)] == ["unet", "emcad"]
    assert (tmp_path / "zoo" / "unet" / "train_summary.json").stat().st_mtime == mtime
    assert "| unet |" in capsys.readouterr().out
