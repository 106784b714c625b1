"""UW-Madison GI tract support: Kaggle RLE (row-major, 1-based) and the per-slice multi-class masks of the CSV."""

import numpy as np
import pytest

from medseg_core.data import read_uwmadison_csv, uwmadison_slice_info
from medseg_core.io import rle_decode, rle_encode

# A 4x5 slice, pixels numbered 1..20 row by row. Encoded by hand:
#   large_bowel  row 0, columns 1-3      -> pixels 2, 3, 4            -> "2 3"
#   small_bowel  row 1, columns 3-4, and row 2, column 0 (one run across the row end) -> 9, 10, 11 -> "9 3"
#   stomach      row 0, column 3 (also large bowel), row 3, columns 0-1 -> 4, 16, 17 -> "4 1 16 2"
EXPECTED = np.array(
    [
        [0, 1, 1, 3, 0],
        [0, 0, 0, 2, 2],
        [2, 0, 0, 0, 0],
        [3, 3, 0, 0, 0],
    ],
    np.uint8,
)
CSV = """id,class,segmentation
case1_day0_slice_0001,large_bowel,2 3
case1_day0_slice_0001,small_bowel,9 3
case1_day0_slice_0001,stomach,4 1 16 2
case1_day0_slice_0002,large_bowel,
case1_day0_slice_0002,small_bowel,
case1_day0_slice_0002,stomach,
"""


def test_rle_decode_is_row_major_and_one_based():
    mask = rle_decode("2 3 9 3", (4, 5))
    assert mask.shape == (4, 5) and mask.dtype == np.uint8
    assert mask[0].tolist() == [0, 1, 1, 1, 0]
    assert mask[1].tolist() == [0, 0, 0, 1, 1] and mask[2].tolist() == [1, 0, 0, 0, 0]
    assert mask.sum() == 6
    assert rle_decode("", (2, 3)).sum() == 0


def test_rle_encode_inverts_decode():
    rng = np.random.default_rng(0)
    mask = (rng.random((7, 9)) > 0.6).astype(np.uint8)
    mask[0, 0] = mask[-1, -1] = 1  # runs touching both ends of the image
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle, mask.shape), mask)
    large_bowel = np.zeros((4, 5), np.uint8)
    large_bowel[0, 1:4] = 1
    assert rle_encode(large_bowel) == "2 3"
    assert rle_encode(EXPECTED == 2) == "9 3"
    assert rle_encode(np.zeros((3, 3))) == ""


@pytest.mark.parametrize("rle", ["1", "0 2", "3 0", "19 3", "a b"])
def test_rle_decode_rejects_bad_runs(rle):
    with pytest.raises(ValueError):
        rle_decode(rle, (4, 5))


def test_read_csv_builds_multiclass_masks(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(CSV)
    masks = read_uwmadison_csv(path, (4, 5))
    assert list(masks) == ["case1_day0_slice_0001", "case1_day0_slice_0002"]
    first = masks["case1_day0_slice_0001"]
    # The overlapping pixel (0, 3) is large bowel and stomach: the higher index (stomach, 3) wins.
    assert first.dtype == np.uint8 and np.array_equal(first, EXPECTED)
    assert masks["case1_day0_slice_0002"].shape == (4, 5) and masks["case1_day0_slice_0002"].max() == 0


def test_read_csv_overlap_rule_does_not_depend_on_row_order(tmp_path):
    lines = CSV.splitlines()
    path = tmp_path / "reordered.csv"
    path.write_text("\n".join([lines[0], lines[3], lines[2], lines[1]]) + "\n")
    assert np.array_equal(read_uwmadison_csv(path, (4, 5))["case1_day0_slice_0001"], EXPECTED)


def test_read_csv_per_slice_shapes_and_errors(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(CSV)
    masks = read_uwmadison_csv(path, {"case1_day0_slice_0001": (4, 5), "case1_day0_slice_0002": (6, 3)})
    assert masks["case1_day0_slice_0002"].shape == (6, 3)
    with pytest.raises(ValueError, match="no \\(height, width\\)"):
        read_uwmadison_csv(path, {"case1_day0_slice_0001": (4, 5)})
    bad = tmp_path / "bad.csv"
    bad.write_text("id,class,segmentation\nx,liver,1 1\n")
    with pytest.raises(ValueError, match="unknown class"):
        read_uwmadison_csv(bad, (2, 2))
    bad.write_text("id,organ,rle\nx,stomach,1 1\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_uwmadison_csv(bad, (2, 2))


def test_slice_info_from_file_name():
    sid, shape = uwmadison_slice_info("train/case123/case123_day20/scans/slice_0042_310_266_1.50_1.50.png")
    assert sid == "case123_day20_slice_0042"
    assert shape == (266, 310)  # the name gives width first
    with pytest.raises(ValueError):
        uwmadison_slice_info("scans/image_0001.png")
