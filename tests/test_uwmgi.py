"""The UW-Madison GI Tract competition folder read as published (train.csv beside train/case*/case*_day*/scans/),
on a small replica of that layout written here: 16-bit slices of several sizes, run-length masks with overlapping
organs and empty rows, splits by case, the pixel spacing in the metadata, and a 2-step training run from it."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

from medseg_core import Segmenter, training
from medseg_core.batch import segment_files
from medseg_core.commands import train as train_command
from medseg_core.config import DataLayoutError, RecipeError, load_config, recipe_schema
from medseg_core.data import (
    SegDataset,
    read_sample_mask,
    read_split,
    read_uwmadison_competition,
    recipe_split,
    uwmadison_slice_meta,
)
from medseg_core.evaluation import main as evaluate
from medseg_core.io import read_image, rle_encode, to_rgb_uint8

RECIPE = ROOT / "train" / "configs" / "unet_uwmgi.yaml"
ORGANS = ("large_bowel", "small_bowel", "stomach")
# (case, day, width, height, pixel spacing): sizes differ between scans and are not square, so a decoder that mixes
# up width and height, or rows and columns, cannot pass.
SCANS = [("case1", "day0", 48, 40, 1.5), ("case1", "day5", 48, 40, 1.5), ("case2", "day3", 40, 56, 1.63),
         ("case7", "day0", 56, 48, 1.5), ("case10", "day12", 44, 44, 1.6)]
SLICES = 3


def draw(h: int, w: int, k: int) -> np.ndarray:
    """A (3, h, w) 0/1 stack for slice ``k`` of a scan: slice 1 has no organ at all; the large and small bowel
    overlap on slices 2 and 3; the stomach is only on slice 3."""
    stack = np.zeros((3, h, w), np.uint8)
    if k == 1:
        return stack
    stack[0, 4:h // 2, 3:w // 2] = 1                                                   # large bowel: a box
    cv2.circle(stack[1], (w // 2 - 2, h // 2 - 2), min(h, w) // 5, 1, -1)             # small bowel, overlapping
    if k == 3:
        cv2.ellipse(stack[2], (3 * w // 4, 3 * h // 4), (w // 8, h // 10), 20, 0, 360, 1, -1)  # stomach
    return stack


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """The replica: returns (root, {slice id: drawn stack}, {slice id: raw 16-bit image})."""
    root = tmp_path_factory.mktemp("uw-madison-gi-tract-image-segmentation")
    rng = np.random.default_rng(0)
    rows, masks, raws = ["id,class,segmentation"], {}, {}
    for case, day, w, h, spacing in SCANS:
        scans = root / "train" / case / f"{case}_{day}" / "scans"
        scans.mkdir(parents=True)
        for k in range(1, SLICES + 1):
            sid = f"{case}_{day}_slice_{k:04d}"
            raw = (rng.integers(0, 400, (h, w)) + np.linspace(0, 2600, w)[None]).astype(np.uint16)
            stack = draw(h, w, k)
            raw[stack.any(0)] += 900  # the organs brighter, as on the T1 slices
            assert cv2.imwrite(str(scans / f"slice_{k:04d}_{w}_{h}_{spacing:.2f}_{spacing:.2f}.png"), raw)
            masks[sid], raws[sid] = stack, raw
            rows += [f"{sid},{name},{rle_encode(stack[c])}" for c, name in enumerate(ORGANS)]
    # One row written by hand in the competition's encoding (1-based start/length pairs over the row-major
    # flattened (height, width) slice): case1_day0 slice 1 is 48 wide, so "2 3" is row 0, columns 1-3, and
    # "48 3" runs from the last pixel of row 0 into row 1, columns 0-1.
    hand = "case1_day0_slice_0001"
    rows = [r for r in rows if not r.startswith(f"{hand},stomach,")] + [f"{hand},stomach,2 3 48 3"]
    masks[hand][2, 0, 1:4] = masks[hand][2, 0, 47] = masks[hand][2, 1, 0:2] = 1
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root, masks, raws


def schema():
    return recipe_schema(load_config(RECIPE))


def test_the_competition_folder_reads_every_slice_with_its_masks(competition):
    root, masks, _ = competition
    samples = read_uwmadison_competition(root)
    assert [s.id for s in samples] == sorted(masks) and len(samples) == len(SCANS) * SLICES
    for s in samples:
        h, w = masks[s.id].shape[1:]
        assert np.array_equal(read_sample_mask(s, schema(), (h, w)), masks[s.id]), s.id
    by_id = {s.id: s for s in samples}
    hand = read_sample_mask(by_id["case1_day0_slice_0001"], schema(), (40, 48))
    assert np.argwhere(hand[2]).tolist() == [[0, 1], [0, 2], [0, 3], [0, 47], [1, 0], [1, 1]]
    assert hand[:2].sum() == 0  # empty rows are absent organs
    overlap = masks["case2_day3_slice_0002"]
    assert (overlap[0] & overlap[1]).any()  # the replica really holds overlapping organs ...
    both = read_sample_mask(by_id["case2_day3_slice_0002"], schema(), overlap.shape[1:])
    assert (both[0] & both[1]).sum() == (overlap[0] & overlap[1]).sum()  # ... and the reader keeps both


def test_the_spacing_and_the_case_are_in_the_metadata(competition):
    root, _, _ = competition
    by_id = {s.id: s for s in read_uwmadison_competition(root)}
    meta = by_id["case2_day3_slice_0003"].meta
    assert meta == {"rle_id": "case2_day3_slice_0003", "case": "case2", "day": "day3", "slice": 3, "width": 40,
                    "height": 56, "spacing": (1.63, 1.63)}
    assert by_id["case10_day12_slice_0001"].meta["spacing"] == (1.6, 1.6)
    assert uwmadison_slice_meta("x/case123/case123_day20/scans/slice_0065_266_310_1.50_1.50.png")["height"] == 310
    with pytest.raises(ValueError, match="slice_<n>"):
        uwmadison_slice_meta("x/case1/case1_day0/scans/slice_0065_266.png")


def test_the_16_bit_slices_are_windowed_per_image_as_every_image_is(competition):
    root, masks, raws = competition
    sample = read_uwmadison_competition(root)[4]
    image = read_image(sample.image)
    raw = raws[sample.id]
    assert image.dtype == np.uint8 and image.shape == (*raw.shape, 3)
    assert np.array_equal(image, to_rgb_uint8(raw)) and np.array_equal(image[..., 0], image[..., 2])
    assert image.max() == 255 and raw.max() < 4096  # the 0.5-99.5th percentiles fill 8 bits, not raw / 257
    item = SegDataset([sample], schema=schema())[0]
    assert torch.equal(item["mask"], torch.from_numpy(masks[sample.id]).long())  # (3, H, W), organs overlapping
    assert torch.allclose(item["image"], torch.from_numpy(to_rgb_uint8(raw)).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_splits_are_grouped_by_case_and_deterministic(competition, fraction):
    root, masks, _ = competition
    train = read_uwmadison_competition(root, "train", fraction)
    val = read_uwmadison_competition(root, "val", fraction)
    cases = [{s.meta["case"] for s in part} for part in (train, val)]
    assert cases[0] and cases[1] and not cases[0] & cases[1]
    assert sorted(s.id for s in train + val) == sorted(masks)
    assert [s.id for s in read_uwmadison_competition(root, "val", fraction)] == [s.id for s in val]
    assert abs(len(val) / len(masks) - fraction) <= 0.25  # whole cases of 3 to 6 slices, 15 slices in all
    data = {"layout": "uwmgi_competition", "root": str(root), "val_fraction": fraction}
    assert [s.id for s in recipe_split(data, "val")] == [s.id for s in val]


def test_evaluate_reads_the_folder_by_split_name(competition):
    root, _, _ = competition
    assert [s.id for s in read_split(root, "val")] == [s.id for s in read_uwmadison_competition(root, "val")]


def test_a_missing_csv_folder_or_slice_is_a_one_line_recipe_error(competition, tmp_path):
    root, _, _ = competition
    with pytest.raises(RecipeError, match="holds no train.csv") as err:
        read_uwmadison_competition(tmp_path)
    assert "\n" not in str(err.value) and isinstance(err.value, DataLayoutError)
    (tmp_path / "train.csv").write_text((root / "train.csv").read_text())
    with pytest.raises(RecipeError, match="no train/ folder"):
        read_uwmadison_competition(tmp_path)
    shutil.copytree(root / "train" / "case1" / "case1_day0", tmp_path / "train" / "case1" / "case1_day0")
    assert len(read_uwmadison_competition(root)) == 15  # the complete folder reads
    with pytest.raises(RecipeError, match=r"names 12 slice\(s\) with no image .*\(e.g. case1_day5_slice_0001\)"):
        read_uwmadison_competition(tmp_path)
    with pytest.raises(RecipeError, match="splits train, val, all"):
        read_uwmadison_competition(root, "test")
    with pytest.raises(RecipeError, match="leaves the val split without a case"):
        read_uwmadison_competition(root, "val", 0.01)


def test_the_recipe_checks_its_data_keys():
    cfg = load_config(RECIPE)
    assert cfg["data"]["layout"] == "uwmgi_competition" and recipe_schema(cfg).multilabel
    assert recipe_schema(cfg).foreground == ORGANS
    for override, message in [(["--data.layout", "kaggle"], "data.layout must be one of"),
                              (["--data.val_fraction", "0"], "data.val_fraction must be"),
                              (["--data.val_split", "polyp-val"], "data.val_split: the uwmgi_competition"),
                              (["--data.mask_encoding", "palette"], "data.mask_encoding: the uwmgi_competition")]:
        with pytest.raises(RecipeError, match=message):
            load_config(RECIPE, override)


def test_train_without_the_folder_exits_2_with_one_line(tmp_path, capsys):
    status = train_command(["--config", str(RECIPE), "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
                            "--data.root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "holds no train.csv" in err and len(err.splitlines()) == 1


def test_a_recipe_trains_from_the_folder_saves_reloads_and_predicts(competition, tmp_path):
    root, masks, raws = competition
    torch.manual_seed(0)
    model_dir = training.main([
        "--config", str(RECIPE), "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--no-progress",
        "--data.root", str(root), "--data.val_fraction", "0.3", "--train.batch_size", "2",
        "--train.num_workers", "0", "--model.input_size", "64", "--model.decoder_channels", "[16, 16, 16, 16, 8]",
        "--model.encoder_weights", "random"])
    config = json.loads((model_dir / "config.json").read_text())
    assert config["task"] == "multilabel" and config["class_names"] == list(ORGANS)
    assert config["mask_encoding"] == "rle_csv"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["data"]["layout"] == "uwmgi_competition"
    assert "competition's train.csv" in (model_dir / "README.md").read_text()
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu")
    raw = raws["case2_day3_slice_0003"]
    result = segmenter(raw)  # a 16-bit slice as it is on disk
    assert result.mask.shape == (3, *raw.shape) and result.probs.shape == (3, *raw.shape)
    scans = root / "train" / "case2" / "case2_day3" / "scans"
    rows = segment_files(segmenter, sorted(scans.iterdir()), tmp_path / "out")  # medseg-segment on the 16-bit files
    assert [r["status"] for r in rows] == ["ok"] * SLICES
    assert len(list((tmp_path / "out").glob("slice_0003_*_stomach.png"))) == 1
    out = evaluate(["--model", str(model_dir), "--data", str(root), "--split", "all", "--json",
                    str(tmp_path / "all.json")])
    assert out["n"] == len(masks) and {f"class_dice_{name}" for name in ORGANS} <= set(out)
