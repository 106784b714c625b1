"""medseg-calibrate: each --what chooses a setting on a few real validation images, --record writes it into a copy
of a weights folder, and Segmenter and medseg-evaluate then use what was recorded. Run in-process."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from medseg_core import Segmenter
from medseg_core.commands import calibrate, evaluate
from medseg_core.data import read_split
from medseg_core.evaluation import main as evaluate_main
from medseg_core.hub import recorded_postprocess
from medseg_core.io import read_image, read_mask
from medseg_core.labels import BKAI_NEOPOLYP, LabelSchema
from medseg_core.metrics import per_class_metrics

EDD = LabelSchema("multilabel", ("BE", "suspicious", "HGD", "cancer", "polyp"), mask_encoding="per_class_files")
DEFAULT_CHAIN = ["remove_small_components", "fill_holes", "adaptive_morphology", "region_class_consistency"]


def _split(tmp_path, data_root, name: str, n: int, *more: tuple[str, int]):
    """A split file with the first ``n`` ids of ``name`` (and of each further (split, n))."""
    ids = []
    for split, k in ((name, n), *more):
        ids += (data_root / "splits" / f"{split}.txt").read_text().split()[:k]
    path = tmp_path / f"{name}_{n}.txt"
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def _copy(folder, tmp_path):
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    return out


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = calibrate([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def tiny_edd(tmp_path_factory):
    """A tiny multi-label model (random weights) with EDD2020's five classes."""
    from medseg_core import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights") / "tiny_unet.edd"
    create_model("unet", **{**TINY_UNET, "num_classes": 5}).save_pretrained(folder, config=EDD.to_config())
    return folder


def test_postprocess_records_the_steps_that_helped_and_segmenter_runs_them(tiny_weights, data_root, tmp_path,
                                                                           capsys):
    folder = _copy(tiny_weights, tmp_path)
    split = _split(tmp_path, data_root, "polyp-val", 2)
    common = ["--model", folder, "--data", data_root, "--split", split, "--device", "cpu", "--no-progress"]
    # With a gain of at least -1 required, every step of the default chain "helps".
    status, out, _ = _run(capsys, *common, "--what", "postprocess", "--min-gain", "-1", "--record",
                          "--json", tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    assert status == 0 and "full chain" in out and "Δ dice" in out and "recorded in" in out
    assert list(saved["table"]) == ["none", *DEFAULT_CHAIN, "full chain"] and saved["n"] == 2
    assert saved["split"] == split.stem and saved["what"] == "postprocess"
    assert saved["chosen"] == recorded_postprocess(folder)["steps"] == DEFAULT_CHAIN
    assert Segmenter.from_pretrained(folder, device="cpu").postprocess == tuple(DEFAULT_CHAIN)
    # The table's raw and full-chain rows are medseg-evaluate's figures without and with the recorded chain.
    args = ["--model", str(folder), "--data", str(data_root), "--split", str(split), "--device", "cpu"]
    assert evaluate_main([*args, "--postprocess", "none"])["dice"] == pytest.approx(saved["table"]["none"]["mean"]
                                                                                  ["dice"])
    assert evaluate_main(args)["dice"] == pytest.approx(saved["table"]["full chain"]["mean"]["dice"])
    # A step that does not reach the gain is not recorded: an impossible gain records no step.
    status, out, _ = _run(capsys, *common, "--what", "postprocess", "--steps", "fill_holes", "--min-gain", "2",
                          "--record")
    assert status == 0 and "none (no step helped)" in out
    assert recorded_postprocess(folder)["steps"] == []


def test_postprocess_table_of_a_3_class_model_scores_the_split_level_class_dice(tiny_3class, data_root, tmp_path,
                                                                                capsys):
    split = _split(tmp_path, data_root, "neopolyp-full-val", 2)
    status, out, _ = _run(capsys, "--model", tiny_3class, "--data", data_root, "--split", split, "--what",
                          "postprocess", "--device", "cpu", "--no-progress", "--json", tmp_path / "t.json")
    table = json.loads((tmp_path / "t.json").read_text())["table"]
    assert status == 0 and "Δ class_dice" in out and table["full chain"]["steps"] == DEFAULT_CHAIN
    for entry in table.values():
        assert set(entry["mean"]) == {"dice", "dice_neoplastic", "dice_non-neoplastic", "mdice", "class_dice",
                                      "class_dice_neoplastic", "class_dice_non-neoplastic"}
        assert len(entry["per_image"]) == 2 and all(0.0 <= v <= 1.0 for v in entry["mean"].values())
    evaluated = evaluate_main(["--model", str(tiny_3class), "--data", str(data_root), "--split", str(split),
                               "--device", "cpu", "--postprocess", "none"])
    for key in ("dice", "dice_neoplastic", "mdice", "class_dice", "class_dice_non-neoplastic"):
        assert table["none"]["mean"][key] == pytest.approx(evaluated[key])
    segmenter = Segmenter.from_pretrained(tiny_3class, device="cpu", postprocess=DEFAULT_CHAIN)
    expected = [per_class_metrics(segmenter(read_image(s.image)).mask, read_mask(s.mask, "palette", BKAI_NEOPOLYP),
                                  class_names=BKAI_NEOPOLYP.foreground)["mdice"] for s in read_split(data_root,
                                                                                                       str(split))]
    assert table["full chain"]["mean"]["mdice"] == pytest.approx(np.mean(expected))


def test_class_bias_is_chosen_recorded_and_used(tiny_3class, data_root, tmp_path, capsys):
    folder = _copy(tiny_3class, tmp_path)
    split = _split(tmp_path, data_root, "neopolyp-full-val", 3)
    status, out, _ = _run(capsys, "--model", folder, "--data", data_root, "--split", split, "--what", "class-bias",
                          "--grid", "0", "1", "3", "--record", "--json", tmp_path / "b.json", "--device", "cpu",
                          "--no-progress")
    saved = json.loads((tmp_path / "b.json").read_text())
    chosen = saved["chosen"]
    assert status == 0 and "recorded in" in out and len(saved["results"]) == 2
    assert chosen["class_dice"] == max(r["class_dice"] for r in saved["results"]) >= saved["class_dice_plain"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class_bias"] == chosen["class_bias"] and config["postprocess"] == chosen["postprocess"]
    segmenter = Segmenter.from_pretrained(folder, device="cpu")
    assert segmenter.postprocess == tuple(chosen["postprocess"])
    assert segmenter.class_bias == (None if len(set(chosen["class_bias"])) == 1 else chosen["class_bias"])
    args = ["--model", str(folder), "--data", str(data_root), "--split", str(split), "--device", "cpu"]
    tuned = evaluate_main(args)
    untuned = evaluate_main([*args, "--class-bias", "0", "0", "0", "--postprocess", "none"])
    assert tuned["class_dice"] == pytest.approx(chosen["class_dice"], abs=1e-6)
    assert untuned["class_dice"] == pytest.approx(saved["class_dice_plain"], abs=1e-6)


def test_thresholds_are_chosen_recorded_and_used(tiny_edd, data_root, tmp_path, capsys):
    folder = _copy(tiny_edd, tmp_path)
    split = _split(tmp_path, data_root, "edd-val", 3)
    status, out, _ = _run(capsys, "--model", folder, "--data", data_root, "--split", split, "--what", "thresholds",
                          "--grid", "0.2", "0.4", "0.6", "--record", "--json", tmp_path / "t.json", "--device",
                          "cpu", "--no-progress")
    saved = json.loads((tmp_path / "t.json").read_text())
    assert status == 0 and "recorded in" in out
    assert saved["grid"] == [0.2, 0.4, 0.5, 0.6] and len(saved["thresholds"]) == 5
    dice = np.array(saved["dice"])  # (thresholds, classes): the choice is the best of each column
    for c, t in enumerate(saved["thresholds"]):
        assert dice[saved["grid"].index(t), c] == dice[:, c].max()
    assert saved["class_dice_at_thresholds"] >= saved["class_dice_at_0.5"]
    assert json.loads((folder / "config.json").read_text())["thresholds"] == saved["thresholds"]
    assert Segmenter.from_pretrained(folder, device="cpu").threshold == saved["thresholds"]
    args = ["--model", str(folder), "--data", str(data_root), "--split", str(split), "--device", "cpu"]
    assert evaluate_main(args)["class_dice"] == pytest.approx(saved["class_dice_at_thresholds"], abs=1e-6)
    assert evaluate_main([*args, "--threshold", "0.5"])["class_dice"] == pytest.approx(saved["class_dice_at_0.5"],
                                                                                       abs=1e-6)


def test_presence_rule_is_chosen_recorded_and_applied(tiny_weights, tmp_path, data_root, capsys):
    """On lesion and lesion-free frames: the rule is recorded, Segmenter holds it, medseg-evaluate reports the
    presence figures at it."""
    folder = _copy(tiny_weights, tmp_path)
    split = _split(tmp_path, data_root, "polyp-val", 3, ("polyp-negative-val", 3))
    out = tmp_path / "cal.json"
    status, printed, _ = _run(capsys, "--model", folder, "--data", data_root, "--split", split, "--what", "presence",
                              "--specificity", "1", "--record", "--json", out, "--plot", tmp_path / "trade.png",
                              "--device", "cpu", "--no-progress")
    chosen = json.loads(out.read_text())
    recorded = json.loads((folder / "config.json").read_text())["presence"]
    assert status == 0 and "recorded in" in printed
    assert recorded["threshold"] == chosen["rule"]["threshold"] and recorded["chosen_on"] == [split.stem]
    assert chosen["metrics"]["frame_specificity"] == 1.0
    assert Segmenter.from_pretrained(folder, device="cpu").presence.threshold == recorded["threshold"]
    assert (tmp_path / "trade.png").stat().st_size > 1000 and (tmp_path / "trade_sweep.json").is_file()
    result = tmp_path / "eval.json"
    assert evaluate(["--model", str(folder), "--data", str(data_root), "--split", str(split), "--json", str(result),
                     "--device", "cpu"]) == 0
    figures = json.loads(result.read_text())
    assert figures["presence_frame_specificity"] == 1.0
    assert figures["presence_rule"]["threshold"] == recorded["threshold"]
    assert figures["presence_lesion_free_frames"] == 3 and "regions" in figures["per_image"][0]["presence"]


def test_presence_refuses_splits_without_lesion_free_frames(tiny_weights, tmp_path, data_root, capsys):
    split = _split(tmp_path, data_root, "polyp-val", 2)
    status, _, err = _run(capsys, "--model", tiny_weights, "--data", data_root, "--split", split, "--device", "cpu",
                          "--no-progress", "--record")
    assert status == 2 and "frames without a lesion" in err and len(err.strip().splitlines()) == 1
    assert "presence" not in json.loads((tiny_weights / "config.json").read_text())


@pytest.mark.parametrize("what, model, message", [
    ("thresholds", "tiny_weights", "for multi-label models"),
    ("class-bias", "tiny_weights", "two or more lesion classes"),
    ("postprocess", "tiny_edd", "binary and multi-class models"),
])
def test_a_setting_that_does_not_fit_the_model_is_refused(what, model, message, request, data_root, tmp_path,
                                                          capsys):
    folder = _copy(request.getfixturevalue(model), tmp_path)
    before = (folder / "config.json").read_text()
    split = _split(tmp_path, data_root, "polyp-val", 1)
    status, _, err = _run(capsys, "--model", folder, "--data", data_root, "--split", split, "--what", what,
                          "--record", "--device", "cpu", "--no-progress")
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert (folder / "config.json").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--what", "thresholds", "--steps", "fill_holes"], "--steps is for --what postprocess"),
    (["--what", "presence", "--grid", "0.5"], "--grid is for --what class-bias or thresholds"),
    (["--what", "postprocess", "--specificity", "0.9"], "--specificity is for --what presence"),
    (["--what", "class-bias", "--chains", "fill_holes+open_sesame"], "unknown post-processing step 'open_sesame'"),
    (["--what", "postprocess", "--steps", "refine"], "the refine step needs --refiner"),
    (["--what", "biases"], "invalid choice"),
])
def test_flags_of_another_setting_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        calibrate(["--model", "x", "--split", "polyp-val", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
