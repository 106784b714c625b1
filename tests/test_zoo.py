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


def test_the_seed004_entry_takes_that_recipe_optimiser_within_this_budget(data_root):
    printed = run_script("bench/zoo.py", "--models", "unet", "unet_seed004", "--config",
                         "train/configs/zoo_neopolyp.yaml", "--data", data_root, "--test-splits", "neopolyp-full-test",
                         "--train.epochs", "6", "--dry-run").stdout.splitlines()
    plain, seed = (line for line in printed if "train/train.py" in line)
    assert "--train.optimizer" not in plain and "--train.schedule" not in plain
    # The seed's recipe: Adam, weight decay 1e-4, lr x0.6 every 5 of its 24 epochs -> every 1.25 of 6 epochs here.
    assert seed.endswith("--train.optimizer adam --train.lr 0.001 --train.weight_decay 0.0001 --train.schedule "
                         "exponential --train.gamma 0.6 --train.step_epochs 1.25")
    assert "--split neopolyp-full-test" in printed[-1]


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


def test_the_gastroscopy_study_takes_its_splits_from_the_recipe(data_root):
    printed = run_script("bench/zoo.py", "--ablation", "--config", "train/configs/zoo_edd2020.yaml", "--data",
                         data_root, "--test-splits", "edd-test", "--out", "runs/x", "--seed", "1",
                         "--dry-run").stdout.splitlines()
    enhance = [line for line in printed if "medseg_core.enhance" in line]
    assert len(enhance) == 2 and "--split edd-train" in enhance[0] and "--split edd-val --views original" in enhance[1]
    tdc = next(line for line in printed if "train/train.py" in line and "unet_tdc" in line)
    n_train = len((data_root / "splits" / "edd-train.txt").read_text().split())
    assert "--data.root runs/x/edd-train-tdc" in tdc and f"--max-steps {15 * (n_train // 8)}" in tdc
    assert all("--seed 1" in line for line in printed if "train/train.py" in line)


def test_a_multilabel_entry_is_tabulated_per_class(data_root, tmp_path):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    ids = (data_root / "splits" / "edd-train.txt").read_text().split()
    train.write_text("\n".join(ids[:8]) + "\n")
    test.write_text("\n".join(ids[8:10]) + "\n")
    args = ["--models", "unet", "--config", "train/configs/zoo_edd2020.yaml", "--data", data_root, "--out",
            tmp_path / "zoo", "--test-splits", test, "--json", tmp_path / "zoo.json", "--seed", "3",
            "--data.train_split", train, "--data.val_split", test, "--model.input_size", "64",
            "--train.epochs", "1", "--train.batch_size", "4", "--data.cache_max_side", "96",
            "--model.encoder_weights", "random", "--tune-thresholds"]
    table = run_script("bench/zoo.py", *args).stdout
    row = json.loads((tmp_path / "zoo.json").read_text())["rows"][0]
    assert row["seed"] == 3 and row["steps"] == 2
    # Raw figures at 0.5 although thresholds are now recorded; the tuned ones evaluated with those thresholds.
    config = json.loads((tmp_path / "zoo" / "unet" / "model" / "config.json").read_text())
    assert len(row["thresholds"]) == 5 and config["thresholds"] == row["thresholds"]
    assert "--threshold 0.5" in row["commands"][str(test)] and "--record" in row["commands"]["thresholds"]
    tuned = row["test_thresholds"]["test"]
    assert tuned["class_dice"] >= row["test"]["test"]["class_dice"]  # chosen on this very split (val = test here)
    assert "At per-class thresholds chosen on the validation split" in table
    result = row["test"]["test"]
    assert {f"class_dice_{c}" for c in ("BE", "suspicious", "HGD", "cancer", "polyp")} <= set(result)
    assert {"dice", "iou", "accuracy", "mdice", "class_dice"} <= set(result)
    head = next(line for line in table.splitlines() if line.startswith("| entry"))
    assert "| lesion Dice | IoU | acc | mDice | BE | suspicious | HGD | cancer | polyp | class Dice |" in head
    assert f"| unet | 3 | test | {result['dice']:.4f} |" in table
