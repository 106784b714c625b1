"""medseg_core.io: every mask encoding, images beyond 8-bit RGB, and the files a prediction is written as."""

import json

import cv2
import numpy as np
import pytest
from conftest import ROOT

from medseg_core.data import SegDataset, read_sample_mask, read_split
from medseg_core.io import (
    decode_mask,
    read_image,
    read_mask,
    read_rle_csv,
    rle_decode,
    rle_encode,
    slice_group,
    to_rgb_uint8,
    window_to_uint8,
    write_mask,
    write_png,
)
from medseg_core.labels import BKAI_NEOPOLYP, LabelSchema, schema_from_config

EDD = LabelSchema("multilabel", ("BE", "suspicious", "HGD", "cancer", "polyp"), mask_encoding="per_class_files")
UWMGI = LabelSchema("multiclass", ("background", "large_bowel", "small_bowel", "stomach"),
                    ((0, 0, 0), (0, 255, 0), (255, 255, 0), (255, 0, 0)), "palette")


def test_an_early_cancer_style_0_1_png_is_a_lesion_not_empty(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 1
    write_png(tmp_path / "eec.png", mask)
    assert read_mask(tmp_path / "eec.png").sum() == 100  # binary encoding, values {0, 1}: class indices
    write_png(tmp_path / "kvasir.png", mask * 255)
    assert read_mask(tmp_path / "kvasir.png").sum() == 100
    noisy = mask * 250 + 3  # JPEG-like 3 / 253
    assert decode_mask(noisy).sum() == 100
    assert read_mask(tmp_path / "eec.png", "indexed").max() == 1


def test_a_16_bit_grey_slice_is_windowed_to_the_full_8_bit_range(tmp_path):
    rng = np.random.default_rng(0)
    slice16 = (rng.random((64, 64)) * 3000).astype(np.uint16)  # an MRI slice: values up to 3000 of 65535
    cv2.imwrite(str(tmp_path / "slice.png"), slice16)
    image = read_image(tmp_path / "slice.png")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.max() == 255 and image.min() == 0, "windowed, not scaled by 65535 (which gave a maximum of 11)"
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all(), "grey: 3 equal channels"
    # the same rule at inference: load_image_file and to_rgb_uint8 give the same pixels
    from medseg_core.inference import load_image_file

    assert np.array_equal(load_image_file(tmp_path / "slice.png"), image)
    assert np.array_equal(to_rgb_uint8(slice16), image)
    assert window_to_uint8(np.full((4, 4), 65535, np.uint16)).max() == 255  # flat: its level on the dtype's scale
    assert window_to_uint8(np.array([[0.0, np.nan], [1e6, 5.0]])).dtype == np.uint8


def test_an_image_without_a_finite_pixel_is_refused_not_read_as_black(tmp_path):
    import PIL.Image

    from medseg_core.inference import ImageInputError, load_image_file

    PIL.Image.fromarray(np.full((32, 32), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageInputError, match="nan.tif: the image holds no finite value"):
        load_image_file(tmp_path / "nan.tif")
    for array in (np.full((8, 8, 3), np.nan, np.float32), np.full((8, 8), np.inf)):
        with pytest.raises(ValueError, match="no finite value"):
            to_rgb_uint8(array)
    partly = np.full((8, 8), np.nan, np.float32)
    partly[2:4, 2:4] = 0.7  # some finite pixels: windowed as before, the NaN ones at the lowest level
    assert to_rgb_uint8(partly).max() == 178


def test_palette_masks_take_the_nearest_colour():
    rgb = np.array([[[0, 0, 0], [250, 10, 5], [5, 240, 20], [60, 50, 40]]], np.uint8)
    assert decode_mask(rgb, "palette", BKAI_NEOPOLYP).tolist() == [[0, 1, 2, 0]]
    edge = np.array([[[200, 200, 10], [20, 200, 30], [230, 30, 30], [128, 128, 0]]], np.uint8)  # interpolated
    assert decode_mask(edge, "palette", UWMGI).tolist() == [[2, 1, 3, 2]]


def test_real_uwmgi_mini_masks_decode_to_four_classes(data_root):
    samples = read_split(data_root, "uwmgi-mini")
    assert len(samples) == 36
    seen = set()
    for s in samples[:6]:
        mask = read_mask(s.mask, "palette", UWMGI)
        seen |= set(np.unique(mask).tolist())
        image = read_image(s.image)
        assert mask.shape == image.shape[:2] and (image[..., 0] == image[..., 2]).all()
    assert seen <= {0, 1, 2, 3} and len(seen) >= 3


def test_edd2020_per_class_files_are_multilabel_stacks(data_root):
    samples = read_split(data_root, "edd-train")
    assert len(samples) == 271 and all(isinstance(s.mask, tuple) for s in samples)
    overlapping = 0
    for s in samples[:40]:
        image = read_image(s.image)
        stack = read_sample_mask(s, EDD, image.shape[:2])
        assert stack.shape == (5, *image.shape[:2]) and set(np.unique(stack)) <= {0, 1}
        named = {p.stem.rsplit("_", 1)[1] for p in s.mask}
        assert {EDD.class_names[k] for k in range(5) if stack[k].any()} <= named
        overlapping += int((stack.sum(0) > 1).any())
    assert overlapping > 0, "EDD2020 classes overlap: some image must have a pixel in two classes"
    with pytest.raises(ValueError, match="schema"):
        read_mask(samples[0].mask, "per_class_files")


def test_rle_csv_round_trip_on_uwmgi_mini_and_training_data(data_root, tmp_path):
    from medseg_core.io import write_rle_csv

    samples = read_split(data_root, "uwmgi-mini")[:5]
    masks = {s.image.stem: read_mask(s.mask, "palette", UWMGI) for s in samples}
    csv_file = write_rle_csv(tmp_path / "masks.csv", masks, UWMGI.foreground)
    back = read_rle_csv(csv_file, {k: m.shape for k, m in masks.items()}, UWMGI.foreground)
    for sid, mask in masks.items():
        expected = np.stack([mask == k + 1 for k in range(3)]).astype(np.uint8)
        assert np.array_equal(back[sid], expected), sid
    # A dataset folder with images/ and masks.csv reads like any other, through the rle_csv encoding.
    root = tmp_path / "root"
    (root / "uwmgi" / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    for s in samples:
        (root / "uwmgi" / "images" / s.image.name).write_bytes(s.image.read_bytes())
    (root / "uwmgi" / "masks.csv").write_bytes(csv_file.read_bytes())
    (root / "splits" / "rle.txt").write_text("".join(f"uwmgi/{s.image.stem}\n" for s in samples))
    rle_schema = LabelSchema("multiclass", UWMGI.class_names, UWMGI.colours, "rle_csv")
    rle_samples = read_split(root, "rle")
    for s, sid in zip(rle_samples, masks):
        assert np.array_equal(read_sample_mask(s, rle_schema, masks[sid].shape), masks[sid])
    item = SegDataset(rle_samples, schema=rle_schema)[0]
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert slice_group(samples[0].image.stem).startswith("case")


def test_rle_codec_is_row_major_and_one_based():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 1:3] = 1
    mask[2, 3] = 1
    assert rle_encode(mask) == "2 2 12 1"
    assert np.array_equal(rle_decode("2 2 12 1", (3, 4)), mask)


def test_write_mask_gives_an_index_png_and_a_colour_png(tmp_path):
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    files = write_mask(tmp_path, "x", mask, BKAI_NEOPOLYP)
    assert read_mask(files["mask"], "indexed").tolist() == mask.tolist()
    assert read_mask(files["colour"], "palette", BKAI_NEOPOLYP).tolist() == mask.tolist()
    binary = write_mask(tmp_path, "b", (mask > 0).astype(np.uint8), schema_from_config({"num_classes": 1}))
    assert set(np.unique(cv2.imread(str(binary["mask"]), cv2.IMREAD_UNCHANGED))) == {0, 255}
    stack = np.zeros((5, 2, 2), np.uint8)
    stack[0, 0, 0] = stack[3, 0, 0] = 1
    multi = write_mask(tmp_path, "m", stack, EDD)
    assert sorted(multi) == sorted([*EDD.class_names, "colour"])
    back = read_mask([multi[n] for n in EDD.class_names], "per_class_files", EDD)
    assert np.array_equal(back, stack)


def test_shipped_weights_carry_their_label_schema():
    for folder in sorted((ROOT / "weights").glob("*/config.json")):
        config = json.loads(folder.read_text())
        assert config["task"] in ("binary", "multiclass", "multilabel") and config["class_names"], folder
        schema = schema_from_config(config)
        assert schema.outputs_ok(config["num_classes"])
    neopolyp = schema_from_config(json.loads((ROOT / "weights/unet_lite2.neopolyp/config.json").read_text()))
    assert neopolyp == BKAI_NEOPOLYP
