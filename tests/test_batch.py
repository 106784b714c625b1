import csv
import zipfile

import cv2
import numpy as np
import pytest
from bad_inputs import build_corpus
from conftest import EXAMPLES

from medseg_core import Segmenter
from medseg_core.batch import expand_inputs, segment_files, write_results_zip


@pytest.fixture(scope="module")
def segmenter(tiny_weights):
    return Segmenter.from_pretrained(tiny_weights, device="cpu")


def test_batch_writes_masks_and_statistics_and_survives_bad_files(segmenter, tmp_path):
    corpus = build_corpus(tmp_path / "bad", huge=False)
    paths = [*EXAMPLES[:2], corpus["text_renamed.png"][0], corpus["grey.png"][0]]
    rows = segment_files(segmenter, paths, tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok"]
    assert "not an image" in rows[2]["error"]
    mask = cv2.imread(str(tmp_path / "out" / rows[0]["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (rows[0]["height"], rows[0]["width"]) and set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == rows[0]["lesion_pixels"]
    with open(tmp_path / "out" / "statistics.csv") as f:
        assert [r["file"] for r in csv.DictReader(f)] == [p.name for p in paths]
    archive = write_results_zip(tmp_path / "out", tmp_path / "masks.zip")
    assert sorted(zipfile.ZipFile(archive).namelist()) == sorted(
        [r["mask"] for r in rows if r["mask"]] + ["statistics.csv"])


def test_zip_inputs_are_flattened_and_filtered(tmp_path):
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(EXAMPLES[0], "a/x.jpg")
        z.write(EXAMPLES[1], "../../b/x.jpg")  # hostile path: flattened, renamed, never written outside
        z.writestr("notes.txt", "ignored")
        z.writestr("__MACOSX/.x.jpg", "ignored")
    paths = expand_inputs([archive, EXAMPLES[2]], tmp_path / "work")
    names = sorted(p.name for p in paths)
    assert names == sorted(["x.jpg", "x_1.jpg", EXAMPLES[2].name])
    assert all(tmp_path / "work" in p.parents for p in paths if p != EXAMPLES[2])
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="zip"):
        expand_inputs([bad], tmp_path / "work")
