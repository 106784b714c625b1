"""Single-image training: ROI files, the complement rule, patch sampling, and short end-to-end runs."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from conftest import EXAMPLES

from medseg_core.io import read_image, read_mask
from medseg_core.metrics import dice_score
from medseg_core.single_image import (
    IGNORE,
    SingleImageConfig,
    label_map,
    main,
    read_roi,
    roi_from_labelme,
    roi_marks_normal,
    sample_patches,
    segment_single_image,
    write_result,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    # These tests train for dozens of steps; on a busy 2-core machine two intra-op threads wait on each other
    # (10 steps took 680 s with 2 threads against 3 s with 1), so they run on one and restore the setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# A tiny, fast network and schedule for tests (the defaults take about a minute).
FAST = {"patch_size": 32, "patches_per_scale": 8, "batch_size": 8, "max_side": 96, "lr": 3e-3,
        "model_kwargs": {"encoder": "tf_efficientnet_lite0", "encoder_weights": "random",
                         "decoder_channels": [16, 16, 16, 8, 8]}}


def synthetic(lesion_radius: int, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A pink, noisy mucosa with a darker, redder, blotchy disk in the middle, and the disk's mask."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (205, 130, 120)
    lesion = np.zeros((size, size), np.uint8)
    cv2.circle(lesion, (size // 2, size // 2), lesion_radius, 1, -1)
    blotches = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 2)
    image[lesion > 0] = (150, 50, 60)
    image[lesion > 0] += 40 * blotches[lesion > 0, None]
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), lesion


# ---- ROI files -----------------------------------------------------------------------------------------------------

def test_read_roi_from_a_binary_png(tmp_path):
    roi = np.zeros((60, 80), np.uint8)
    roi[10:30, 20:50] = 255
    cv2.imwrite(str(tmp_path / "roi.png"), roi)
    assert np.array_equal(read_roi(tmp_path / "roi.png", (60, 80)), roi > 0)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.stack([roi * 0, roi, roi * 0], -1))  # drawn in green
    assert np.array_equal(read_roi(tmp_path / "rgb.png", (60, 80)), roi > 0)
    half = read_roi(tmp_path / "roi.png", (120, 160))  # same aspect ratio: resized
    assert half.shape == (120, 160) and half[40, 70] and not half[5, 5]
    with pytest.raises(ValueError, match="but the image is"):
        read_roi(tmp_path / "roi.png", (80, 80))
    cv2.imwrite(str(tmp_path / "empty.png"), roi * 0)
    with pytest.raises(ValueError, match="empty"):
        read_roi(tmp_path / "empty.png", (60, 80))


def test_read_roi_from_labelme_json(tmp_path):
    annotation = {
        "imageWidth": 160, "imageHeight": 120,  # annotated on a twice-larger copy of the image
        "shapes": [
            {"label": "lesion", "shape_type": "polygon", "points": [[20, 20], [60, 20], [60, 60], [20, 60]]},
            {"label": "lesion", "shape_type": "rectangle", "points": [[140, 100], [100, 80]]},
            {"label": "note", "shape_type": "line", "points": [[0, 0], [10, 10]]},
        ],
    }
    (tmp_path / "roi.json").write_text(json.dumps(annotation))
    roi = read_roi(tmp_path / "roi.json", (60, 80))
    assert roi.shape == (60, 80)
    assert roi[10:30, 10:30].all() and roi[40:50, 50:70].all()
    assert not roi[35, 40] and not roi[0, 0]
    assert abs(int(roi.sum()) - (21 * 21 + 21 * 11)) < 40
    with pytest.raises(ValueError, match="no polygon"):
        roi_from_labelme({"shapes": [annotation["shapes"][2]]}, (60, 80))


def test_the_complement_rule():
    roi = np.zeros((40, 40), bool)
    roi[10:30, 10:30] = True
    assert not roi_marks_normal(roi)
    assert roi_marks_normal(~roi)
    partial = ~roi
    partial[-1, -1] = False  # three white corners are not enough
    assert not roi_marks_normal(partial)


# ---- sampling ------------------------------------------------------------------------------------------------------

def test_sampling_statistics():
    roi = np.zeros((120, 160), bool)
    cv2.circle(roi.view(np.uint8), (70, 60), 25, 1, -1)
    labels, margins = label_map(roi, inner_margin=0.05, outer_margin=0.3)
    assert margins["outer_px"] == round(0.3 * np.sqrt(roi.sum())) and margins["inner_px"] >= 1
    assert set(np.unique(labels)) == {0, 1, IGNORE}
    assert not (labels[~roi] == 1).any(), "positives only inside the ROI"
    dilated = cv2.dilate(roi.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (
        2 * margins["outer_px"] + 1,) * 2)).astype(bool)
    assert not (labels[dilated] == 0).any(), "negatives only outside the margin band"

    scales = (0.1, 0.25, 0.4)
    patches = sample_patches(labels, scales, 20, np.random.default_rng(3))
    assert len(patches) == 3 * 2 * 20
    for scale in scales:
        at = [p for p in patches if p["scale"] == scale]
        assert sum(p["label"] == "positive" for p in at) == 20 and sum(p["label"] == "negative" for p in at) == 20
        assert {p["size"] for p in at} == {round(scale * 120)}
    for p in patches:
        if p["label"] == "positive":
            assert roi[p["y"], p["x"]] and labels[p["y"], p["x"]] == 1
        else:
            assert not dilated[p["y"], p["x"]]
    assert patches == sample_patches(labels, scales, 20, np.random.default_rng(3)), "a seed repeats the sampling"
    assert patches != sample_patches(labels, scales, 20, np.random.default_rng(4))


def test_label_map_margins_follow_the_lesion_not_the_roi():
    roi = np.ones((100, 100), bool)
    roi[40:60, 40:60] = False  # ROI of normal tissue around a 20 x 20 lesion
    labels, margins = label_map(roi, 0.05, 0.3)
    assert margins["outer_px"] == 6, "the band is sized from the lesion (the smaller side), not the large ROI"
    assert (labels == 0).any() and (labels == 1).any()
    with pytest.raises(ValueError, match="nothing outside"):
        label_map(np.ones((30, 30), bool), 0.05, 0.3)


# ---- end to end ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("complement", [False, True])
def test_one_image_one_network_finds_the_lesion(complement):
    image, lesion = synthetic(lesion_radius=36 if complement else 22)
    if complement:  # the clinician marks normal tissue: a frame around the lesion, corners included
        roi = np.ones_like(lesion, bool)
        roi[6:-6, 6:-6] = False
    else:  # a rough polygon well inside the lesion
        roi = np.zeros_like(lesion)
        cv2.fillPoly(roi, [np.array([[40, 38], [58, 42], [52, 58], [38, 54]], np.int32)], 1)
        roi = roi.astype(bool)
    calls = []
    result = segment_single_image(image, roi, SingleImageConfig(**FAST, steps=20),
                                  progress=lambda f, desc="": calls.append((f, desc)), show_progress=False)
    assert result.complement is complement and result.record["complement"] is complement
    assert result.mask.shape == lesion.shape and result.mask.dtype == np.uint8
    assert dice_score(result.mask, lesion) > 0.8
    assert len(result.losses) == 20 and result.record["train"]["steps"] == 20
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_cli_writes_mask_overlay_and_sampling_record(tmp_path):
    image = read_image(EXAMPLES[0])
    scale = 96 / max(image.shape[:2])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gt = read_mask(EXAMPLES[0].with_name(EXAMPLES[0].stem + "_mask.png"))
    gt = cv2.resize(gt, small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    roi = cv2.erode(gt, np.ones((5, 5), np.uint8))
    cv2.imwrite(str(tmp_path / "image.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "roi.png"), roi * 255)
    out = tmp_path / "out"
    rows = main(["--image", str(tmp_path / "image.png"), "--roi", str(tmp_path / "roi.png"), "--out", str(out),
                 "--steps", "3", "--patches-per-scale", "4", "--patch-size", "32", "--batch-size", "4"])
    assert sorted(p.name for p in out.iterdir()) == ["mask.png", "overlay.png", "sampling.json"]
    mask = cv2.imread(str(out / "mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == small.shape[:2] and set(np.unique(mask)) <= {0, 255}
    record = json.loads((out / "sampling.json").read_text())
    assert record["seed"] == 0 and record["complement"] is False and len(record["patches"]) == 3 * 2 * 4
    assert {"x", "y", "size", "scale", "label"} <= set(record["patches"][0])
    assert record["config"]["steps"] == 3 and len(rows) == 1 and rows[0]["complement"] is False


def test_batch_mode_writes_masks_and_a_summary(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "rois").mkdir()
    for i, radius in enumerate((20, 30)):
        image, lesion = synthetic(radius, size=64, seed=i)
        cv2.imwrite(str(tmp_path / "images" / f"case{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "rois" / "case0_roi.png"), synthetic(10, size=64)[1] * 255)
    (tmp_path / "rois" / "case1.json").write_text(json.dumps(
        {"shapes": [{"label": "x", "points": [[26, 26], [38, 26], [38, 38], [26, 38]]}]}))
    out = tmp_path / "out"
    rows = main(["--images", str(tmp_path / "images"), "--rois", str(tmp_path / "rois"), "--out", str(out),
                 "--steps", "2", "--patches-per-scale", "2", "--patch-size", "32", "--batch-size", "2"])
    assert [r["image"] for r in rows] == ["case0.png", "case1.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["case0.png", "case1.png"]
    assert len(list((out / "sampling").iterdir())) == 2 and len(list((out / "overlays").iterdir())) == 2
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["image"] for r in summary] == ["case0.png", "case1.png"] and "lesion_percent" in summary[0]
    assert "summary:" in capsys.readouterr().out


def test_cli_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--rois" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--image", "x.png", "--out", str(tmp_path)])  # no ROI
    with pytest.raises(SystemExit):
        main(["--image", "x.png", "--roi", "y.png", "--images", "d", "--rois", "e", "--out", str(tmp_path)])


def test_early_encoder_stages_are_frozen_only_when_pretrained():
    from medseg_core.models import get_model_class
    from medseg_core.single_image import _freeze_early_stages

    unet = get_model_class("unet")
    model = unet(**{**FAST["model_kwargs"], "encoder_weights": "imagenet"})
    frozen = _freeze_early_stages(model, 2)
    assert frozen[0] is model.encoder.conv_stem and frozen[-1] is model.encoder.blocks[1]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.encoder.blocks[2].parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert _freeze_early_stages(unet(**{**FAST["model_kwargs"], "encoder_weights": "imagenet"}), 0) == []
    assert _freeze_early_stages(unet(**FAST["model_kwargs"]), 2) == [], "random stems are not frozen"


def test_write_result_names(tmp_path):
    image, lesion = synthetic(20, size=48)
    result = segment_single_image(image, lesion.astype(bool), SingleImageConfig(**{**FAST, "patches_per_scale": 2},
                                  steps=1), show_progress=False)
    single = write_result(result, tmp_path / "one")
    batch = write_result(result, tmp_path / "many", stem="case")
    assert all(p.is_file() for p in (*single.values(), *batch.values()))
    assert batch["mask"] == tmp_path / "many" / "masks" / "case.png"


# ---- the evaluation's ROI rule -------------------------------------------------------------------------------------

def test_roi_from_ground_truth_is_a_rough_polygon_inside_the_lesion(data_root):
    from medseg_core.data import read_split
    from medseg_core.single_image import roi_from_ground_truth

    sample = read_split(data_root, "test-clinicdb")[0]
    gt = read_mask(sample.mask)
    roi = roi_from_ground_truth(gt, np.random.default_rng(0))
    assert roi.any() and not (roi & (gt == 0)).any(), "inside the lesion"
    assert roi.sum() < 0.8 * (gt > 0).sum(), "rough: well short of the whole lesion"
    assert np.array_equal(roi, roi_from_ground_truth(gt, np.random.default_rng(0)))
    assert not np.array_equal(roi, roi_from_ground_truth(gt, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="no lesion"):
        roi_from_ground_truth(np.zeros((10, 10), np.uint8), np.random.default_rng(0))
