"""The scripts in studies/ (one-off experiments behind docs/studies/): one in-process smoke test each, on a few real
images; the library code they call is tested where it lives."""

from __future__ import annotations

import json

from conftest import load_script

from medseg_core.data import read_split
from medseg_core.io import read_image
from medseg_core.models import list_models


def test_zoo_prints_a_command_per_entry_and_the_seed004_optimiser(data_root, capsys):
    zoo = load_script("studies/zoo.py")
    assert zoo.main(["--data", str(data_root), "--dry-run"]) == []
    trained = {line.split("--model.arch ")[1].split()[0] for line in capsys.readouterr().out.splitlines()
               if "train/train.py" in line}
    assert trained == set(list_models()) - {"refiner"}
    zoo.main(["--models", "unet_seed004", "--config", "train/configs/zoo_neopolyp.yaml", "--data", str(data_root),
              "--test-splits", "neopolyp-full-test", "--train.epochs", "6", "--dry-run", "--tune-thresholds"])
    printed = capsys.readouterr().out.splitlines()
    train = next(line for line in printed if "train/train.py" in line)
    # Adam, weight decay 1e-4, lr x0.6 every 5 of the seed's 24 epochs -> every 1.25 of 6 epochs here.
    assert train.endswith("--train.optimizer adam --train.lr 0.001 --train.weight_decay 0.0001 --train.schedule "
                          "exponential --train.gamma 0.6 --train.step_epochs 1.25")
    assert any("medseg_core.calibrate --what thresholds" in line and "--record" in line for line in printed)


def test_lesion_free_counts_the_lesion_free_images_of_an_old_json(data_root, tmp_path):
    split = tmp_path / "mixed.txt"
    ids = [*(data_root / "splits/polyp-val.txt").read_text().split()[:1],
           *(data_root / "splits/polyp-negative-val.txt").read_text().split()[:1]]
    split.write_text("".join(f"{i}\n" for i in ids))
    old = {"split": str(split), "dice": 0.5, "per_image": [{"id": ids[0], "dice": 0.8}, {"id": ids[1], "dice": 0.2}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    row, = load_script("studies/lesion_free.py").main([str(tmp_path / "old.json"), "--data", str(data_root),
                                                       "--json", str(tmp_path / "t.json")])
    assert row["n"] == 2 and row["lesion_free_images"] == 1 and row["false_alarms"] == 1
    assert row["dice_lesion_images"] == 0.8 and json.loads((tmp_path / "t.json").read_text())["rows"] == [row]


def test_single_image_eval_runs_on_two_images(data_root, tmp_path):
    result = load_script("studies/single_image_eval.py").main([
        "--data", str(data_root), "--n", "2", "--steps", "2", "--max-side", "96", "--json", str(tmp_path / "s.json")])
    rows = result["per_image"]
    assert [r["id"].split("/")[0] for r in rows] == ["kvasir-seg", "cvc-clinicdb"], "spread over the two splits"
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows) and (tmp_path / "s.json").is_file()


def test_overlay_figure_draws_a_row_per_image(tiny_3class, data_root, tmp_path):
    sample = read_split(data_root, "neopolyp-full-val")[0]
    out = tmp_path / "fig.png"
    assert load_script("studies/overlay_figure.py").main(["--model", str(tiny_3class), "--data", str(data_root),
                                                          "--ids", sample.id, "--out", str(out), "--tile-width",
                                                          "64"]) == 0
    h, w = read_image(sample.image).shape[:2]
    assert read_image(out).shape == (round(h * 64 / w) + 26 * 2, 3 * 64 + 2 * 4, 3)  # one labelled row, the legend
