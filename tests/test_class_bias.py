"""A multi-class model's class bias: which lesion class a pixel or region takes, never where the lesion is; its
checks, its record in config.json and bench/class_bias.py choosing it on a split."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_script

from medseg_core import Segmenter
from medseg_core.hub import UnsafeWeightsError, record_class_bias, resolve_weights


def _probs(*pixels):
    """(3, 1, N) probabilities from N (background, class 1, class 2) triples."""
    return np.asarray(pixels, np.float32).T[:, None, :]


def test_the_bias_moves_a_lesion_pixel_between_classes_but_not_the_lesion_boundary(tiny_3class):
    probs = _probs((0.2, 0.5, 0.3), (0.2, 0.45, 0.35), (0.4, 0.25, 0.35), (0.6, 0.3, 0.1))
    plain = Segmenter.from_pretrained(tiny_3class, device="cpu")
    assert plain.class_bias is None and plain.mask_from_probs(probs).tolist() == [[1, 1, 0, 0]]
    biased = Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[0, 0, 0.5])  # x1.65 for class 2
    # 0.3 x 1.65 < 0.5 stays class 1; 0.35 x 1.65 > 0.45 turns class 2; background stays background (0.4 > 0.35
    # and 0.6 > 0.3 unscaled), though the scaled class 2 (0.58) would outweigh 0.4.
    assert biased.mask_from_probs(probs).tolist() == [[1, 2, 0, 0]]
    # The same offset on every class, or none, changes nothing.
    assert Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[1, 1, 1]).class_bias is None


def test_the_region_vote_reads_the_biased_probabilities(tiny_3class):
    # One region of four pixels: class 1 holds more probability mass (2.0 against 1.2) until class 2 is scaled
    # by e (3.26); the reported probabilities stay the network's.
    probs = _probs((0.1, 0.6, 0.3), (0.1, 0.6, 0.3), (0.1, 0.4, 0.5), (0.2, 0.4, 0.1))
    image = np.zeros((1, 4, 3), np.uint8)
    plain = Segmenter.from_pretrained(tiny_3class, device="cpu", postprocess=["region_class_consistency"])
    biased = Segmenter.from_pretrained(tiny_3class, device="cpu", postprocess=["region_class_consistency"],
                                       class_bias=[0, 0, 1])
    assert plain.result_from_probs(image, probs).mask.tolist() == [[1, 1, 1, 1]]
    result = biased.result_from_probs(image, probs)
    assert result.mask.tolist() == [[2, 2, 2, 2]]
    assert np.array_equal(result.probs, probs) and np.allclose(result.confidence, 1 - probs[0])


def test_bad_class_bias_is_refused(tiny_3class, tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="one finite number per class"):
        Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[0, 1])
    with pytest.raises(ValueError, match="one finite number per class"):
        Segmenter.from_pretrained(tiny_3class, device="cpu", class_bias=[0, 0, float("nan")])
    with pytest.raises(ValueError, match="multi-class"):
        Segmenter.from_pretrained(tiny_weights, device="cpu", class_bias=[0, 1])
    model = tmp_path / "m"
    shutil.copytree(tiny_3class, model)
    with pytest.raises(UnsafeWeightsError, match="class_bias"):
        record_class_bias(model, [0, 0, 50])
    config = json.loads((model / "config.json").read_text())
    config["class_bias"] = [0, 0, "1"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeWeightsError, match="class_bias"):
        Segmenter.from_pretrained(resolve_weights(model), device="cpu")


def test_class_bias_script_chooses_records_and_evaluate_uses_it(tiny_3class, data_root, tmp_path):
    from medseg_core.evaluation import main as evaluate

    model = tmp_path / "tiny_unet.neopolyp"
    shutil.copytree(tiny_3class, model)
    split = tmp_path / "three.txt"
    ids = (data_root / "splits/neopolyp-full-val.txt").read_text().split()
    split.write_text("".join(f"{i}\n" for i in ids[:3]))
    out = run_script("bench/class_bias.py", "--model", model, "--data", data_root, "--split", split, "--grid", "0",
                     "1", "3", "--json", tmp_path / "b.json", "--record", "--no-progress").stdout
    saved = json.loads((tmp_path / "b.json").read_text())
    chosen = saved["chosen"]
    assert "recorded in" in out and len(saved["results"]) == 2
    assert chosen["class_dice"] == max(r["class_dice"] for r in saved["results"]) >= saved["class_dice_plain"]
    config = json.loads((model / "config.json").read_text())
    assert config["class_bias"] == chosen["class_bias"] and config["postprocess"] == chosen["postprocess"]
    args = ["--model", str(model), "--data", str(data_root), "--split", str(split), "--device", "cpu"]
    tuned = evaluate(args)
    untuned = evaluate([*args, "--class-bias", "0", "0", "0", "--postprocess", "none"])
    assert tuned["postprocess"] == chosen["postprocess"] and untuned["class_bias"] is None
    assert tuned["class_dice"] == pytest.approx(chosen["class_dice"], abs=1e-6)
    assert untuned["class_dice"] == pytest.approx(saved["class_dice_plain"], abs=1e-6)
    assert run_script("bench/class_bias.py", "--model", model, "--split", split, "--grid", "20", expect=2)


def test_recording_a_choice_made_on_a_test_split_warns(caplog):
    from medseg_core.cli import warn_if_test_split

    with caplog.at_level("WARNING", logger="medseg"):
        warn_if_test_split("neopolyp-full-val", "class bias")
        assert not caplog.records
        warn_if_test_split("splits/neopolyp-full-test.txt", "class bias")
    assert len(caplog.records) == 1 and "class bias chosen on a test split" in caplog.records[0].getMessage()


def test_region_classifier_probe_counts_confusion_and_region_votes(tiny_3class, data_root, tmp_path):
    """bench/region_classifier.py: the pixel confusion covers the split's pixels and gives the split-level class Dice
    evaluate.py gives; every ground-truth polyp is a region with the model's vote, whose accuracy the JSON states; a
    classifier trains and is scored; a training split whose polyps hold one class only, or none, is refused."""
    from PIL import Image

    from medseg_core.data import read_sample_mask, read_split
    from medseg_core.evaluation import main as evaluate
    from medseg_core.labels import BKAI_NEOPOLYP

    split = tmp_path / "eight.txt"
    split.write_text("".join(f"{i}\n" for i in (data_root / "splits/neopolyp-full-val.txt").read_text().split()[:8]))
    run_script("bench/region_classifier.py", "--model", tiny_3class, "--data", data_root, "--train", split, "--val",
               split, "--size", "32", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--no-progress",
               "--json", tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    confusion = np.array(saved["confusion"])
    assert confusion.sum() == sum(np.prod(Image.open(s.image).size) for s in read_split(data_root, str(split)))
    scores = evaluate(["--model", str(tiny_3class), "--data", str(data_root), "--split", str(split), "--device",
                       "cpu"])
    for name in ("neoplastic", "non-neoplastic"):
        assert saved["pixels"][name]["dice"] == pytest.approx(scores[f"class_dice_{name}"], abs=1e-6)
    b = saved["pixels"]["non-neoplastic"]
    assert (b["missed_as_background"], b["taken_for_other_class"]) == (confusion[2, 0], confusion[2, 1])
    rows = saved["per_region"]
    assert saved["regions"]["val"] == len(rows) >= 8 and 0 < saved["regions"]["val_second"] < len(rows)
    right = [(r["vote"] > 0.5) == bool(r["label"]) for r in rows]
    assert saved["vote"]["wrong"] == right.count(False)
    assert saved["vote"]["area_weighted"] == pytest.approx(
        sum(r["area"] for r, ok in zip(rows, right) if ok) / sum(r["area"] for r in rows))
    assert all(0.0 <= r["vote"] <= 1.0 and 0.0 <= r["classifier"] <= 1.0 for r in rows)
    assert [e["epoch"] for e in saved["epochs"]] == [1]
    neoplastic_only = tmp_path / "red.txt"
    red = [s.id for s in read_split(data_root, str(split))
           if set(np.unique(read_sample_mask(s, BKAI_NEOPOLYP, Image.open(s.image).size[::-1]))) == {0, 1}]
    neoplastic_only.write_text("".join(f"{i}\n" for i in red))
    for train, extra, message in ((neoplastic_only, (), "do not cover both lesion classes"),
                                  (split, ("--min-area", "100000000"), "no ground-truth polyp of at least")):
        refused = run_script("bench/region_classifier.py", "--model", tiny_3class, "--data", data_root, "--train",
                             train, "--val", split, "--no-progress", *extra, expect=1)
        assert message in refused.stderr and "Traceback" not in refused.stderr
