"""The real train/train.py and train/evaluate.py on a few real images, tiny inputs, a couple of steps."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "train"))
import evaluate as evaluate_cli  # noqa: E402

import train as train_cli  # noqa: E402
from medseg_core import load_model  # noqa: E402

CONFIG = str(ROOT / "train" / "configs" / "unet_lite0_polyp.yaml")


def tiny_args(data_root, out, *extra, max_steps=2):
    return [
        "--config", CONFIG, "--output-dir", str(out), "--max-steps", str(max_steps), "--no-progress",
        "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--model.input_size", "64", "--model.decoder_channels", "[16, 16, 16, 16, 8]",
        "--model.encoder_weights", "random", *extra,
    ]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model_dir = train_cli.main(tiny_args(data_root, out))
    return out, model_dir


def test_train_writes_a_loadable_model_card_and_checkpoint(trained):
    out, model_dir = trained
    model = load_model(model_dir)
    assert model.input_size == 64 and model.num_classes == 1
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    card = (model_dir / "README.md").read_text()
    assert "polyp-train" in card and "polyp-val" in card
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["best_val_dice"] <= 1.0
    assert list((out / "checkpoints").glob("checkpoint_*"))
    assert list(out.rglob("events.out.tfevents.*")), "TensorBoard tracker wrote nothing"


def test_resume_continues_from_the_checkpoint(trained, data_root):
    out, _ = trained
    train_cli.main(tiny_args(data_root, out, "--resume", "latest", max_steps=4))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["epochs"] == 2


def test_overrides_and_bad_arguments(tmp_path):
    cfg = train_cli.load_config(CONFIG, ["--train.epochs", "3", "--model.encoder", "tf_efficientnet_lite2"])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["encoder"] == "tf_efficientnet_lite2"
    assert cfg["data"]["train_split"] == "polyp-train"
    with pytest.raises(SystemExit):
        train_cli.load_config(CONFIG, ["--train.epochs"])
    with pytest.raises(SystemExit):
        train_cli.resolve_resume_path("latest", tmp_path)


def test_push_to_hub_offline_fails_clearly_but_keeps_the_weights(data_root, tmp_path, caplog):
    with pytest.raises(SystemExit):
        train_cli.main(tiny_args(data_root, tmp_path, "--push-to-hub", "medseg/test-offline"))
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert "could not push to the Hub" in caplog.text


def test_evaluate_on_a_tiny_split(trained, data_root, tmp_path):
    _, model_dir = trained
    split = tmp_path / "tiny.txt"
    split.write_text("kvasir-seg/cju0u82z3cuma0835wlxrnrjv\npolypgen/100S0001\n")  # the second has an empty mask
    out_json = tmp_path / "out.json"
    result = evaluate_cli.main(["--model", str(model_dir), "--data", str(data_root), "--split", str(split),
                                "--json", str(out_json), "--csv", str(tmp_path / "rows.csv")])
    saved = json.loads(out_json.read_text())
    assert saved["n"] == 2 and len(saved["per_image"]) == 2
    for key in ("dice", "iou", "accuracy", "precision", "recall", "hd95"):
        assert key in saved and saved[key] == pytest.approx(
            sum(r[key] for r in saved["per_image"]) / 2)
    assert result["split"] == "tiny"
    assert (tmp_path / "rows.csv").read_text().startswith("id,dice")


def test_evaluate_on_user_folders(trained, tmp_path):
    _, model_dir = trained
    examples = ROOT / "examples"
    (tmp_path / "img").mkdir()
    for p in sorted(examples.glob("*.jpg"))[:2]:
        (tmp_path / "img" / p.name).write_bytes(p.read_bytes())
    result = evaluate_cli.main(["--model", str(model_dir), "--images", str(tmp_path / "img"),
                                "--masks", str(examples)])
    assert result["n"] == 2


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help(script):
    out = subprocess.run([sys.executable, str(ROOT / "train" / script), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage" in out.stdout


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
