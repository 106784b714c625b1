"""3-class NeoPolyp: colour-mask decoding on the real files, the fixed validation split, the recipe, per-class
evaluation on a tiny 3-class model."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT

from medseg_core import Segmenter
from medseg_core.data import read_split
from medseg_core.io import decode_mask, read_image, read_mask
from medseg_core.labels import BKAI_NEOPOLYP
from medseg_core.metrics import per_class_metrics

SPLITS = ROOT / "train" / "splits"
NEOPOLYP = "bkai-igh-neopolyp"


def test_decode_neopolyp_colours_with_jpeg_noise():
    """Nearest of black, red and green: JPEG noise and interpolated edges decode to the closest class."""
    colours = np.array([[[0, 0, 0], [12, 9, 20], [230, 25, 31], [90, 70, 60]],
                        [[20, 210, 18], [128, 20, 20], [127, 200, 0], [40, 60, 30]]], np.uint8)
    assert decode_mask(colours, "palette", BKAI_NEOPOLYP).tolist() == [[0, 0, 1, 0], [2, 1, 2, 0]]
    with pytest.raises(ValueError, match="schema"):
        decode_mask(colours, "palette")


def test_neopolyp_masks_decode_as_source_md_says(data_root):
    assert len(list((data_root / NEOPOLYP / "masks").iterdir())) == 800
    # The first 200 (SOURCE.md lists them), whose class presence SOURCE.md states.
    first = (data_root / NEOPOLYP / "splits" / "staged_subset_200.txt").read_text().split()
    masks = sorted(data_root / NEOPOLYP / "masks" / f"{Path(name).stem}.png" for name in first)
    assert len(masks) == 200
    presence = {"red only": 0, "green only": 0, "both": 0, "neither": 0}
    for i, path in enumerate(masks):
        mask = read_mask(path, "palette", BKAI_NEOPOLYP)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
        red, green = bool((mask == 1).any()), bool((mask == 2).any())
        presence["both" if red and green else "red only" if red else "green only" if green else "neither"] += 1
        if i % 25 == 0:  # JPEG edge noise: bright pixels that are neither red nor green stay rare (SOURCE.md: <0.45 %)
            raw = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            unmatched = (raw.max(axis=2) > 127) & (mask == 0)
            assert unmatched.mean() < 0.0045
            image = next((data_root / NEOPOLYP / "images").glob(f"{path.stem}.*"))
            assert mask.shape == read_image(image).shape[:2]
    # SOURCE.md's class presence in the included 200 images.
    assert presence == {"red only": 143, "green only": 46, "both": 11, "neither": 0}


def _ids(path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def test_neopolyp_validation_split_is_every_8th_sorted_training_id(data_root):
    train = sorted(_ids(data_root / "splits" / "neopolyp-train.txt"))
    val, fit = _ids(SPLITS / "neopolyp-val.txt"), _ids(SPLITS / "neopolyp-train-fit.txt")
    assert val == train[::8] and len(val) == 20 and len(fit) == 140
    assert sorted(val + fit) == train and not set(val) & set(fit)
    assert not set(train) & set(_ids(data_root / "splits" / "neopolyp-test.txt"))
    samples = read_split(data_root, str(SPLITS / "neopolyp-val.txt"))
    assert [s.id for s in samples] == val and all(s.mask.is_file() for s in samples)


def test_neopolyp_recipe(data_root):
    from medseg_core.config import load_config, recipe_schema
    from medseg_core.training import build_model

    cfg = load_config(ROOT / "train/configs/unet_lite2_neopolyp_full_gpu.yaml", [])
    assert cfg["model"]["num_classes"] == 3 and cfg["model"]["input_size"] == 352
    assert cfg["data"]["mask_encoding"] == "palette" and cfg["data"]["cache_max_side"] == 448
    assert recipe_schema(cfg) == BKAI_NEOPOLYP
    for key in ("train_split", "val_split"):
        assert read_split(data_root, cfg["data"][key])
    model = build_model({**cfg, "model": {**cfg["model"], "encoder_weights": "random"}})
    assert model.num_classes == 3


@pytest.fixture(scope="module")
def two_test_images(data_root, tmp_path_factory):
    ids = _ids(data_root / "splits" / "neopolyp-test.txt")[:2]
    split = tmp_path_factory.mktemp("splits") / "two.txt"
    split.write_text("".join(f"{i}\n" for i in ids))
    return split


@pytest.fixture(scope="module")
def evaluated(tiny_3class, two_test_images, data_root):
    from medseg_core.evaluation import main as evaluate

    return evaluate(["--model", str(tiny_3class), "--data", str(data_root), "--split", str(two_test_images),
                          "--device", "cpu"])


def test_evaluate_reports_per_class_dice_for_3_class_models(evaluated, tiny_3class, two_test_images, data_root):
    result = evaluated
    assert result["n"] == 2
    names = ["neoplastic", "non-neoplastic"]
    assert {"dice", "iou", "mdice", "miou", "class_dice"} <= set(result)
    assert {f"{m}_{n}" for m in ("dice", "iou", "class_dice") for n in names} <= set(result)
    assert result["labels"]["class_names"] == ["background", *names]
    for row in result["per_image"]:
        assert row["mdice"] == pytest.approx((row["dice_neoplastic"] + row["dice_non-neoplastic"]) / 2)
    assert result["mdice"] == pytest.approx(np.mean([r["mdice"] for r in result["per_image"]]))
    # The same numbers, computed here from the Segmenter's masks and the decoded colour masks.
    segmenter = Segmenter.from_pretrained(tiny_3class, device="cpu")
    for sample, row in zip(read_split(data_root, str(two_test_images)), result["per_image"]):
        pred = segmenter(read_image(sample.image)).mask
        expected = per_class_metrics(pred, read_mask(sample.mask, "palette", BKAI_NEOPOLYP), class_names=names)
        for key in ("dice_neoplastic", "dice_non-neoplastic", "iou_neoplastic", "iou_non-neoplastic", "mdice", "miou"):
            assert row[key] == pytest.approx(expected[key])
