"""The image-level "lesion present" decision: regions and their scores, the rule, the split figures, the sweep, the
choice on validation rows, and the rule recorded in config.json reaching every door."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medseg_core.presence import (
    PresenceRule,
    apply_presence,
    choose_presence,
    presence_metrics,
    presence_sweep,
    region_records,
    regions,
)
from medseg_core.safety import UnsafeWeightsError, validate_model_config


def _two_regions() -> tuple[np.ndarray, np.ndarray]:
    """A 100x100 mask with a strong 20x20 region (confidence 0.95) and a weak 4x4 one (0.6)."""
    mask = np.zeros((100, 100), np.uint8)
    conf = np.zeros((100, 100), np.float32)
    mask[10:30, 10:30] = 1
    conf[10:30, 10:30] = 0.95
    conf[15, 15] = 0.99
    mask[70:74, 70:74] = 1
    conf[70:74, 70:74] = 0.6
    return mask, conf


def test_regions_have_area_mean_and_peak():
    mask, conf = _two_regions()
    labels, found = regions(mask > 0, conf)
    assert len(found) == 2 and labels.max() == 2
    big = max(found, key=lambda r: r["pixels"])
    assert big["pixels"] == 400 and big["area"] == pytest.approx(0.04)
    assert big["peak"] == pytest.approx(0.99) and 0.95 < big["mean"] < 0.96


def test_rule_erases_weak_and_small_regions_and_says_why():
    mask, conf = _two_regions()
    kept, decision = apply_presence(mask, conf, PresenceRule("mean", 0.9, 0.0))
    assert kept[72, 72] == 0 and kept[20, 20] == 1
    assert decision["lesion_present"] and decision["regions_found"] == 2 and decision["regions_kept"] == 1
    assert decision["presence_score"] == pytest.approx(0.9505, abs=1e-3) and decision["presence_threshold"] == 0.9
    # An area floor larger than the big region: nothing is drawn, and the frame says no lesion.
    none, decision = apply_presence(mask, conf, PresenceRule("peak", 0.5, 0.05))
    assert not none.any() and not decision["lesion_present"] and decision["presence_score"] == 0.0
    # No rule: every region is kept, and the input is not modified by a rule that drops regions.
    same, decision = apply_presence(mask, conf, None)
    assert (same == mask).all() and decision["lesion_present"] and decision["presence_threshold"] is None
    assert mask[72, 72] == 1


def test_rule_on_several_classes_reads_regions_of_any_class():
    mask, conf = _two_regions()
    mask[20:30, 10:30] = 2  # one region, two classes (multi-class model): judged as one lesion
    kept, decision = apply_presence(mask, conf, PresenceRule("mean", 0.9, 0.0))
    assert decision["regions_found"] == 2 and kept[25, 20] == 2 and kept[72, 72] == 0


def test_rule_on_overlapping_classes_erases_every_plane():
    mask, conf = _two_regions()
    stack = np.stack([mask, mask])
    kept, decision = apply_presence(stack, conf, PresenceRule("mean", 0.9, 0.0))
    assert kept.shape == stack.shape and not kept[:, 72, 72].any() and kept[:, 20, 20].all()


@pytest.mark.parametrize("bad", [{"score": "max", "threshold": 0.5, "min_area": 0},
                                 {"score": "mean", "threshold": 1.5, "min_area": 0},
                                 {"score": "mean", "threshold": True, "min_area": 0},
                                 {"score": "mean", "threshold": 0.5},
                                 "mean 0.5"])
def test_malformed_rules_are_refused(bad):
    with pytest.raises(ValueError):
        PresenceRule.from_config(bad)


def test_config_json_validates_the_recorded_rule(tiny_weights):
    config = json.loads((tiny_weights / "config.json").read_text())
    good = {"score": "mean", "threshold": 0.9, "min_area": 0.001, "chosen_on": ["a-val", "b-val"],
            "specificity": 0.95}
    validate_model_config({**config, "presence": good})
    for bad in ({**good, "threshold": -1}, {**good, "notes": "x"}, {**good, "chosen_on": ["../../etc"]}, [0.9]):
        with pytest.raises(UnsafeWeightsError, match="presence"):
            validate_model_config({**config, "presence": bad})


def _records() -> list[dict]:
    """Three frames: one with a lesion found by a strong region (and a weak false one), one lesion-free with a
    weak false region, one lesion-free with nothing."""
    conf = np.zeros((100, 100), np.float32)
    pred = np.zeros((100, 100), np.uint8)
    truth = np.zeros((100, 100), np.uint8)
    truth[10:30, 10:30] = 1
    truth[90, 90] = 1  # a one-pixel speck: not a lesion (under MIN_TRUTH_AREA)
    pred[12:32, 12:32] = 1
    conf[12:32, 12:32] = 0.97
    pred[60:70, 60:70] = 1
    conf[60:70, 60:70] = 0.7
    first = region_records(pred, conf, truth)
    second = region_records(pred * (conf < 0.9), conf, np.zeros_like(truth))
    third = region_records(np.zeros_like(pred), conf, np.zeros_like(truth))
    return [first, second, third]


def test_split_figures_at_a_rule():
    records = _records()
    assert len(records[0]["truth_lesions"]) == 1  # the speck is not counted
    loose = presence_metrics(records, None)
    assert loose["lesion_sensitivity"] == 1.0 and loose["frame_specificity"] == 0.5
    assert loose["fp_regions_per_free_frame"] == 0.5 and loose["fp_regions_per_frame"] == pytest.approx(2 / 3)
    strict = presence_metrics(records, PresenceRule("mean", 0.9, 0.0))
    assert strict["frame_specificity"] == 1.0 and strict["lesion_sensitivity"] == 1.0
    assert strict["fp_regions_per_frame"] == 0.0 and strict["dice_at_rule"] > loose["dice_at_rule"]
    gone = presence_metrics(records, PresenceRule("mean", 0.99, 0.0))
    assert gone["lesion_sensitivity"] == 0.0 and gone["frame_specificity"] == 1.0


def test_sweep_trades_sensitivity_for_specificity():
    sweep = presence_sweep(_records(), "mean")
    spec = [r["frame_specificity"] for r in sweep]
    sens = [r["lesion_sensitivity"] for r in sweep]
    assert spec == sorted(spec) and sens == sorted(sens, reverse=True)
    assert spec[0] == 0.5 and spec[-1] == 1.0 and sens[0] == 1.0 and sens[-1] == 0.0


def test_choose_picks_the_most_sensitive_rule_at_the_specificity():
    chosen = choose_presence(_records(), specificity=1.0)
    rule, m = chosen["rule"], chosen["metrics"]
    assert m["frame_specificity"] == 1.0 and m["lesion_sensitivity"] == 1.0
    assert 0.7 < rule.threshold <= 0.97
    # Applied to the unrounded scores, the recorded rule keeps the same regions it was chosen on.
    with pytest.raises(ValueError, match="frames without a lesion"):
        choose_presence(_records()[:1], 0.9)


def test_segmenter_applies_the_recorded_rule(tiny_weights, tmp_path, example_image):
    from medseg_core.inference import Segmenter

    folder = tmp_path / "tiny_unet.presence"
    shutil.copytree(tiny_weights, folder)
    loose = Segmenter.from_pretrained(folder, device="cpu", threshold=0.0)  # every pixel lesion: one region
    assert loose.presence is None and loose(example_image).stats["lesion_present"]
    config = json.loads((folder / "config.json").read_text())
    config["presence"] = {"score": "mean", "threshold": 1.0, "min_area": 0.0}
    (folder / "config.json").write_text(json.dumps(config))
    strict = Segmenter.from_pretrained(folder, device="cpu", threshold=0.0)
    result = strict(example_image)
    assert not result.stats["lesion_present"] and not result.mask.any() and result.stats["lesion_pixels"] == 0
    assert result.stats["presence_threshold"] == 1.0
    assert strict(example_image, presence="none").stats["lesion_present"]
    off = Segmenter.from_pretrained(folder, device="cpu", threshold=0.0, apply_presence="none")
    assert off(example_image).mask.any()
    with pytest.raises(ValueError, match="presence"):
        strict(example_image, presence="sometimes")


def test_summary_says_no_lesion_found_with_score_and_threshold():
    from medseg_core.visualize import presence_markdown

    stats = {"lesion_present": False, "presence_score": 0.62, "presence_threshold": 0.9,
             "presence_rule": "mean confidence >= 0.9", "regions_found": 2, "regions_kept": 0, "lesion_pixels": 0}
    text = presence_markdown(stats)
    assert "No lesion found" in text and "0.620" in text and "0.9" in text and "2 weaker" in text
    assert "Lesion found" in presence_markdown({**stats, "lesion_present": True, "regions_kept": 2})
