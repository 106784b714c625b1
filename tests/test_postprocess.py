"""Post-processing steps on hand-made masks, the refine step with a tiny refiner, and the refiner's data path."""

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_UNET, run_main

from medseg_core import create_model
from medseg_core.data import SegDataset, read_split
from medseg_core.postprocess import (
    POSTPROCESSING_STEPS,
    adaptive_kernel_size,
    adaptive_morphology,
    apply_postprocessing,
    fill_holes,
    helpful_steps,
    keep_largest_component,
    refine,
    region_class_consistency,
    remove_small_components,
    resolve_postprocess,
)
from medseg_core.transforms import eval_transform


def square(mask: np.ndarray, y: int, x: int, side: int, value: int = 1) -> np.ndarray:
    mask[y:y + side, x:x + side] = value
    return mask


def disk(shape, centre, radius, value=1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.circle(out, centre, radius, value, -1)
    return out


def probs_for(mask: np.ndarray, num_classes: int = 2, p: float = 0.9) -> np.ndarray:
    """Class probabilities that agree with a mask: ``p`` on the mask's class, the rest spread evenly."""
    out = np.full((num_classes, *mask.shape), (1 - p) / (num_classes - 1), np.float32)
    for c in range(num_classes):
        out[c][mask == c] = p
    return out


# ---- connected components --------------------------------------------------------------------------------------

def test_a_speck_disappears_and_the_lesion_stays():
    mask = square(np.zeros((100, 100), np.uint8), 20, 20, 30)
    mask[80:82, 80:82] = 1  # 4 px < 0.1 % of 10,000 px
    out = remove_small_components(mask)
    assert out[80:82, 80:82].sum() == 0
    assert (out[20:50, 20:50] == 1).all() and out.sum() == 900
    assert mask[80, 80] == 1, "steps must not modify their input"


def test_keep_largest_component():
    mask = square(np.zeros((80, 80), np.uint8), 5, 5, 20, 2)
    square(mask, 50, 50, 10, 1)
    out = keep_largest_component(mask)
    assert (out[5:25, 5:25] == 2).all() and out[50:60, 50:60].sum() == 0
    single = square(np.zeros((20, 20), np.uint8), 2, 2, 5)
    assert np.array_equal(keep_largest_component(single), single)


def test_a_hole_is_filled_with_the_class_around_it():
    binary = square(np.zeros((60, 60), np.uint8), 10, 10, 30)
    binary[20:25, 20:25] = 0
    assert (fill_holes(binary)[10:40, 10:40] == 1).all()

    multi = binary * 2
    multi[10:40, 10:12] = 1  # a thin band of class 1 at the edge: the hole's ring is all class 2
    out = fill_holes(multi)
    assert (out[20:25, 20:25] == 2).all()
    assert np.array_equal(out[binary == 1], multi[binary == 1])


def test_background_touching_the_border_is_not_a_hole():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 0:30] = 1
    mask[15:25, 0:10] = 0  # a notch open to the image border
    assert np.array_equal(fill_holes(mask), mask)


# ---- region class consistency -----------------------------------------------------------------------------------

def test_mixed_regions_become_single_class_by_probability_mass():
    mask = np.zeros((40, 80), np.uint8)
    mask[5:35, 5:35] = 1
    mask[5:35, 23:35] = 2  # region A: 18 columns of class 1, 12 of class 2
    mask[5:35, 45:75] = 2
    mask[5:35, 45:50] = 1  # region B: mostly class 2
    probs = probs_for(np.zeros_like(mask), 3, 0.9)
    # Region A: class 1 wins its pixels narrowly (0.40 vs 0.35); class 2 wins its pixels clearly (0.9).
    a1, a2 = (mask == 1) & (np.arange(80) < 40), (mask == 2) & (np.arange(80) < 40)
    probs[:, a1] = np.array([0.25, 0.40, 0.35])[:, None]
    probs[:, a2] = np.array([0.05, 0.05, 0.90])[:, None]
    b = (mask > 0) & (np.arange(80) >= 40)
    probs[:, b] = np.array([0.1, 0.2, 0.7])[:, None]

    out = region_class_consistency(mask, probs)
    assert set(np.unique(out[:, :40])) == {0, 2}, "class 2 has more mass in region A despite fewer pixels"
    assert set(np.unique(out[:, 40:])) == {0, 2}
    assert np.array_equal(out > 0, mask > 0)

    majority = region_class_consistency(mask, None)  # no probs: the majority of pixels wins
    assert set(np.unique(majority[:, :40])) == {0, 1} and set(np.unique(majority[:, 40:])) == {0, 2}


def test_region_class_consistency_leaves_binary_masks_alone():
    mask = square(np.zeros((30, 30), np.uint8), 5, 5, 10)
    assert np.array_equal(region_class_consistency(mask, probs_for(mask)), mask)
    with pytest.raises(ValueError, match="do not match"):
        region_class_consistency(mask * 2, np.zeros((3, 10, 10), np.float32))


# ---- adaptive morphology -----------------------------------------------------------------------------------------

def test_adaptive_kernel_size_follows_the_region():
    assert adaptive_kernel_size(50) == 3
    assert adaptive_kernel_size(3600) == 9
    assert adaptive_kernel_size(1e7) == 31
    assert all(adaptive_kernel_size(a) % 2 == 1 for a in (0, 10, 400, 900, 5000))


def test_adaptive_morphology_removes_a_spur_but_keeps_a_small_lesion():
    mask = square(np.zeros((120, 120), np.uint8), 20, 20, 60)
    mask[48:50, 80:100] = 1  # a 2-px spur, 20 px long, off the big region's right side
    mask |= disk(mask.shape, (100, 105), 4)  # a small round lesion, area ~50
    out = adaptive_morphology(mask)
    assert out[48:50, 84:100].sum() == 0, "the spur is gone"
    assert out[20:80, 20:80].mean() > 0.97, "the big region stays (corners rounded at most)"
    small = disk(mask.shape, (100, 105), 4).astype(bool)
    assert out[small].mean() > 0.8, "the small lesion is smoothed, not erased"
    big_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))  # the big region's kernel ...
    assert cv2.morphologyEx(small.astype(np.uint8), cv2.MORPH_OPEN, big_kernel).sum() == 0  # ... would erase it
    assert out[~((mask > 0) | small)].sum() <= 10, "closing adds almost nothing to convex shapes"


def test_adaptive_morphology_closing_fills_a_notch_with_the_region_class():
    mask = square(np.zeros((100, 100), np.uint8), 10, 10, 70, 2)
    mask[40:43, 10:30] = 0  # a 3-px slit into the region
    out = adaptive_morphology(mask)
    assert (out[41, 15:30] == 2).all()
    assert set(np.unique(out)) == {0, 2}


def test_adaptive_morphology_does_not_merge_two_close_regions():
    mask = square(np.zeros((80, 140), np.uint8), 10, 10, 60)
    square(mask, 10, 73, 60, 1)  # 3 px apart, kernels of 9 px
    out = adaptive_morphology(mask)
    assert out[:, 70:73].sum() == 0
    assert cv2.connectedComponents(out, connectivity=8)[0] == 3


# ---- the chain -----------------------------------------------------------------------------------------------------

def test_apply_postprocessing_rejects_an_unknown_step():
    mask = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="unknown post-processing step 'open_sesame'"):
        apply_postprocessing(mask, ["fill_holes", "open_sesame"])


def test_apply_postprocessing_chains_steps_in_order():
    mask = square(np.zeros((100, 100), np.uint8), 20, 20, 30)
    mask[30:35, 30:35] = 0
    mask[90, 90] = 1
    out = apply_postprocessing(mask, ["remove_small_components", "fill_holes"], probs_for(mask))
    assert out.sum() == 900 and out[90, 90] == 0
    assert np.array_equal(apply_postprocessing(mask, []), mask)
    assert set(POSTPROCESSING_STEPS) >= {"remove_small_components", "fill_holes", "adaptive_morphology",
                                         "region_class_consistency", "refine", "keep_largest_component"}


# ---- refine --------------------------------------------------------------------------------------------------------

@pytest.fixture()
def tiny_refiner():
    torch.manual_seed(0)
    return create_model("refiner", widths=[8, 16], input_size=32).eval()


def scene():
    image = np.full((96, 128, 3), 90, np.uint8)
    mask = disk((96, 128), (40, 40), 15) | disk((96, 128), (100, 60), 10)
    image[mask > 0] = (200, 80, 70)
    return image, mask


def test_an_untrained_refiner_returns_the_coarse_map(tiny_refiner):
    image, mask = scene()
    probs = probs_for(mask, 2, 0.95)
    out = apply_postprocessing(mask, ["refine"], probs, image=image, refiner=tiny_refiner)
    # Zero-initialised head: refined = coarse, up to resizing at the crops' edges.
    assert (out != mask).mean() < 0.01
    assert set(np.unique(out)) == {0, 1}


def test_refine_uses_the_refiner_output(tiny_refiner):
    image, mask = scene()
    mask = mask * 2
    probs = probs_for(mask, 3, 0.95)  # outside the lesions classes 1 and 2 tie: the region's mass must decide
    probs[:, mask > 0] = np.array([0.05, 0.15, 0.80])[:, None]
    with torch.no_grad():
        tiny_refiner.head.bias.fill_(-20.0)  # "nothing here is lesion"
    assert refine(mask, probs, image, tiny_refiner).sum() == 0
    with torch.no_grad():
        tiny_refiner.head.bias.fill_(20.0)  # "all of each crop is lesion": regions grow to their boxes + margin
    grown = refine(mask, probs, image, tiny_refiner)
    assert grown.sum() > (mask > 0).sum() * 1.2
    assert set(np.unique(grown)) == {0, 2}, "new pixels take the class with most probability mass in the region"
    assert grown[0, 127] == 0, "nothing changes outside the crops"


def test_refine_needs_the_image_and_a_4_channel_refiner(tiny_refiner):
    image, mask = scene()
    with pytest.raises(ValueError, match="needs the image"):
        apply_postprocessing(mask, ["refine"], probs_for(mask))
    with pytest.raises(ValueError, match="4 channels"):
        refine(mask, None, image, create_model("unet", **TINY_UNET))
    empty = np.zeros_like(mask)
    assert np.array_equal(refine(empty, None, image, tiny_refiner), empty)


def test_segmenter_passes_the_image_to_refine(tiny_refiner, example_image):
    from medseg_core import Segmenter

    torch.manual_seed(0)
    base = create_model("unet", **TINY_UNET)
    with torch.no_grad():  # predict lesion in a fixed square, so there is a region to refine
        base.head.weight.zero_()
        base.head.bias.fill_(5.0)
    segmenter = Segmenter(base, device="cpu", refiner=tiny_refiner, postprocess=["refine"])
    result = segmenter(example_image[:96, :96])
    assert result.mask.shape == (96, 96) and result.stats["postprocess"] == ["refine"]
    assert result.mask.all()


# ---- refiner data --------------------------------------------------------------------------------------------------

def test_make_refiner_data_writes_crops_the_dataset_reads_with_4_channels(tmp_path, data_root):
    torch.manual_seed(0)
    base = create_model("unet", **TINY_UNET)
    with torch.no_grad():
        base.head.weight.zero_()
        base.head.bias.fill_(5.0)  # lesion everywhere: one region per image, so every image gives crops
    base.save_pretrained(tmp_path / "base")
    split = tmp_path / "two.txt"
    split.write_text("cvc-clinicdb/1\ncvc-clinicdb/2\n")
    out = tmp_path / "refiner_data"
    log = run_main("train/make_refiner_data.py", "--model", tmp_path / "base", "--data", data_root, "--split",
                     split, "--out", out, "--size", "48", "--device", "cpu", "--out-split", "refiner-train").stderr
    assert "4 crops from 2 images (0 with no predicted region)" in log
    samples = read_split(out, "refiner-train")
    assert len(samples) == 4 and all(s.prob is not None for s in samples)
    prob = cv2.imread(str(samples[0].prob), cv2.IMREAD_GRAYSCALE)
    assert prob.shape == (48, 48) and prob.min() > 240  # the base model's lesion probability, ~1

    raw = SegDataset(samples)[0]
    assert raw["image"].shape == (4, 48, 48)
    assert torch.allclose(raw["image"][3], torch.from_numpy(prob).float() / 255)
    refiner = create_model("refiner", widths=[8, 16], input_size=32)
    item = SegDataset(samples, eval_transform(32, refiner.mean, refiner.std))[0]
    assert item["image"].shape == (4, 32, 32) and item["mask"].shape == (32, 32)
    assert 0.9 < item["image"][3].min() <= item["image"][3].max() <= 1.0, "the probability is not normalised"
    with torch.no_grad():
        assert refiner(item["image"][None]).shape == (1, 1, 32, 32)


def test_the_refiner_recipe_trains_on_those_crops(tmp_path, data_root):
    from medseg_core import load_model
    from medseg_core.training import main as train_main

    base = create_model("unet", **TINY_UNET)
    with torch.no_grad():
        base.head.weight.zero_()
        base.head.bias.fill_(5.0)  # one region per image, so the image gives crops
    base.save_pretrained(tmp_path / "base")
    split = tmp_path / "one.txt"
    split.write_text("cvc-clinicdb/3\n")
    out = tmp_path / "refiner_data"
    run_main("train/make_refiner_data.py", "--model", tmp_path / "base", "--data", data_root, "--split", split,
               "--out", out, "--size", "32", "--device", "cpu", "--margin", "0.2", "0.3")
    model_dir = train_main(["--config", str(ROOT / "train/configs/refiner_polyp.yaml"), "--output-dir",
                            str(tmp_path / "run"), "--max-steps", "2", "--no-progress", "--data.root", str(out),
                            "--data.train_split", "refiner-one", "--data.val_split", "refiner-one",
                            "--train.batch_size", "2", "--model.widths", "[8, 16]", "--model.input_size", "32"])
    refiner = load_model(model_dir)
    assert refiner.arch == "refiner" and refiner.in_channels == 4 and refiner.num_classes == 1


def test_make_refiner_data_help():
    assert "--crops-per-region" in run_main("train/make_refiner_data.py", "--help").stdout


# --- the chain recorded with a model's weights -------------------------------------------------------------------

@pytest.fixture()
def weights_with_chain(tiny_weights, tiny_refiner, tmp_path):
    """A copy of the tiny weights whose config.json records a chain with ``refine`` and a refiner folder beside."""
    import shutil

    folder = tmp_path / "tiny_unet.chain"
    shutil.copytree(tiny_weights, folder)
    tiny_refiner.save_pretrained(folder / "refiner")
    return folder


def test_recorded_chain_round_trip_and_segmenter_default(weights_with_chain, example_image):
    import json

    from medseg_core import Segmenter
    from medseg_core.hub import record_postprocess, recorded_postprocess

    assert recorded_postprocess(weights_with_chain) == {"steps": [], "refiner": None}
    record_postprocess(weights_with_chain, ["refine", "remove_small_components"], str(weights_with_chain / "refiner"))
    assert json.loads((weights_with_chain / "config.json").read_text())["refiner"] == "refiner"
    recorded = recorded_postprocess(weights_with_chain)
    assert recorded == {"steps": ["refine", "remove_small_components"], "refiner": str(weights_with_chain / "refiner")}
    seg = Segmenter.from_pretrained(weights_with_chain, device="cpu")
    assert seg.postprocess == ("refine", "remove_small_components") and seg.refiner is not None
    assert seg(example_image).stats["postprocess"] == ["refine", "remove_small_components"]
    raw = Segmenter.from_pretrained(weights_with_chain, device="cpu", postprocess="none")
    assert raw.postprocess == () and raw.recorded_postprocess == ("refine", "remove_small_components")
    assert raw(example_image).stats["postprocess"] == []
    assert raw(example_image, postprocess="recorded").stats["postprocess"] == ["refine", "remove_small_components"]
    # The model itself still loads: config.json's extra keys are not constructor arguments.
    record_postprocess(weights_with_chain, ["fill_holes"])
    assert recorded_postprocess(weights_with_chain) == {"steps": ["fill_holes"], "refiner": None}


def test_recorded_chain_errors(weights_with_chain):
    import json

    from medseg_core import Segmenter
    from medseg_core.hub import recorded_postprocess

    config = json.loads((weights_with_chain / "config.json").read_text())
    (weights_with_chain / "config.json").write_text(json.dumps({**config, "postprocess": ["erode_everything"]}))
    with pytest.raises(ValueError, match="unknown post-processing steps"):
        recorded_postprocess(weights_with_chain)
    (weights_with_chain / "config.json").write_text(json.dumps({**config, "postprocess": ["refine"]}))
    with pytest.raises(ValueError, match="needs a refiner"):
        Segmenter.from_pretrained(weights_with_chain, device="cpu")(np.zeros((32, 32, 3), np.uint8))


def test_helpful_steps_are_those_that_raise_the_headline_score_alone():
    table = {"none": {"mean": {"dice": 0.5}}, "fill_holes": {"mean": {"dice": 0.52}},
             "remove_small_components": {"mean": {"dice": 0.5005}}, "adaptive_morphology": {"mean": {"dice": 0.4}}}
    chain = ["remove_small_components", "fill_holes", "adaptive_morphology"]
    assert helpful_steps(table, chain, 0.001) == ["fill_holes"]
    assert helpful_steps(table, chain, 0.0) == ["remove_small_components", "fill_holes"]
    # Multi-class tables are judged on the split-level class Dice, not on the per-image mean.
    three = {"none": {"mean": {"dice": 0.8, "mdice": 0.6, "class_dice": 0.5}},
             "region_class_consistency": {"mean": {"dice": 0.8, "mdice": 0.7, "class_dice": 0.49}},
             "fill_holes": {"mean": {"dice": 0.8, "mdice": 0.6, "class_dice": 0.51}}}
    assert helpful_steps(three, ["fill_holes", "region_class_consistency"], 0.001) == ["fill_holes"]


def test_evaluate_applies_the_recorded_chain_unless_told_otherwise(weights_with_chain, data_root, tmp_path):
    from medseg_core.evaluation import main as evaluate
    from medseg_core.hub import record_postprocess

    record_postprocess(weights_with_chain, ["fill_holes", "remove_small_components"])
    split = tmp_path / "one.txt"
    split.write_text("cvc-clinicdb/4\n")
    common = ["--model", str(weights_with_chain), "--data", str(data_root), "--split", str(split), "--device", "cpu"]
    assert evaluate(common)["postprocess"] == ["fill_holes", "remove_small_components"]
    assert evaluate([*common, "--postprocess", "recorded"])["postprocess"] == ["fill_holes", "remove_small_components"]
    assert evaluate([*common, "--postprocess", "none"])["postprocess"] == []
    assert evaluate([*common, "--postprocess", "fill_holes"])["postprocess"] == ["fill_holes"]
    with pytest.raises(SystemExit):
        evaluate([*common, "--postprocess", "model"])


def test_one_meaning_of_postprocess():
    recorded = ("fill_holes",)
    assert resolve_postprocess("recorded", recorded) == resolve_postprocess(None, recorded) == ("fill_holes",)
    assert resolve_postprocess(["recorded"], recorded) == ("fill_holes",)
    assert resolve_postprocess("none", recorded) == resolve_postprocess(["none"], recorded) == ()
    assert resolve_postprocess(["remove_small_components"], recorded) == ("remove_small_components",)
    assert resolve_postprocess([], recorded) == ()
    with pytest.raises(ValueError, match="unknown post-processing step"):
        resolve_postprocess(["recorded", "fill_holes", "open_sesame"], recorded)
    with pytest.raises(ValueError, match="'recorded', 'none'"):
        resolve_postprocess("model", recorded)
