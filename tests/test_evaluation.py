"""Evaluation (medseg_core.evaluation, what train/evaluate.py and medseg-evaluate run) on a few real images."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from medseg_core import training
from medseg_core.evaluation import main as evaluate_main

CONFIG = str(ROOT / "train" / "configs" / "unet_lite0_polyp.yaml")


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model_dir = training.main([
        "--config", CONFIG, "--output-dir", str(out), "--max-steps", "1", "--no-progress",
        "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "2", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--model.input_size", "64", "--model.decoder_channels", "[16, 16, 16, 16, 8]",
        "--model.encoder_weights", "random",
    ])
    return out, model_dir


def test_evaluate_on_a_tiny_split(trained, data_root, tmp_path):
    _, model_dir = trained
    split = tmp_path / "tiny.txt"
    split.write_text("kvasir-seg/cju0u82z3cuma0835wlxrnrjv\npolypgen/100S0001\n")  # the second has an empty mask
    out_json = tmp_path / "out.json"
    result = evaluate_main(["--model", str(model_dir), "--data", str(data_root), "--split", str(split),
                                "--json", str(out_json), "--csv", str(tmp_path / "rows.csv")])
    saved = json.loads(out_json.read_text())
    assert saved["n"] == 2 and len(saved["per_image"]) == 2
    for key in ("dice", "iou", "accuracy", "precision", "recall", "hd95"):
        assert key in saved and saved[key] == pytest.approx(
            sum(r[key] for r in saved["per_image"]) / 2)
    assert result["split"] == "tiny"
    lesion, empty = saved["per_image"]
    assert lesion["n_lesion_truth"] > 0 and empty["n_lesion_truth"] == 0
    assert saved["lesion_free_images"] == 1 and saved["false_alarms"] == int(empty["n_lesion_pred"] > 0)
    assert saved["dice_lesion_images"] == pytest.approx(lesion["dice"])
    assert empty["dice"] == (0.0 if empty["n_lesion_pred"] else 1.0)
    assert (tmp_path / "rows.csv").read_text().startswith("id,dice")


def test_tta_scales_imply_tta_and_are_recorded_in_the_json(trained, tmp_path):
    _, model_dir = trained
    out_json = tmp_path / "out.json"
    result = evaluate_main(["--model", str(model_dir), "--images", str(ROOT / "examples"), "--masks",
                            str(ROOT / "examples"), "--limit", "1", "--tta-scales", "0.5", "1",
                            "--json", str(out_json)])
    saved = json.loads(out_json.read_text())
    assert result["tta"] is saved["tta"] is True and saved["tta_sizes"] == [32, 64]
    with pytest.raises(SystemExit, match="from 0.5 to 2"):
        evaluate_main(["--model", str(model_dir), "--images", str(ROOT / "examples"), "--masks",
                       str(ROOT / "examples"), "--tta-scales", "4"])


def test_evaluate_on_user_folders(trained, tmp_path):
    _, model_dir = trained
    examples = ROOT / "examples"
    (tmp_path / "img").mkdir()
    for p in sorted(examples.glob("polypgen_*.jpg"))[:2]:
        (tmp_path / "img" / p.name).write_bytes(p.read_bytes())
    result = evaluate_main(["--model", str(model_dir), "--images", str(tmp_path / "img"),
                                "--masks", str(examples)])
    assert result["n"] == 2


def test_evaluate_under_accelerate_launch_with_two_processes(trained, data_root, tmp_path):
    _, model_dir = trained
    split = tmp_path / "four.txt"
    ids = [s for s in (data_root / "splits" / "test-clinicdb.txt").read_text().split()[:4]]
    split.write_text("\n".join(ids))
    out_json = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train" / "evaluate.py"),
         "--model", str(model_dir), "--data", str(data_root), "--split", str(split), "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads(out_json.read_text())
    assert saved["n"] == 4 and sorted(r["id"] for r in saved["per_image"]) == sorted(ids)
