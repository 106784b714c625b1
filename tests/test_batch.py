import csv
import re
import shutil
import zipfile

import cv2
import numpy as np
import pytest
from bad_inputs import build_corpus
from conftest import EXAMPLES, TINY_UNET
from test_models import tiny

from medseg_core import Segmenter
from medseg_core.batch import expand_inputs, segment_files, write_results_zip
from medseg_core.io import read_image, read_mask
from medseg_core.predict_folder import main as predict_folder_main


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
    overlay = cv2.imread(str(tmp_path / "out" / rows[0]["overlay"]), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (*mask.shape, 3)
    with open(tmp_path / "out" / "statistics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["file"] for r in table] == [p.name for p in paths]
    # The image-level decision: present exactly where a lesion is drawn, with the frame's presence score.
    assert [r["lesion_present"] for r in table] == [str(int(r["lesion_pixels"] > 0)) if r["status"] == "ok" else ""
                                                    for r in rows]
    assert all(0 <= float(r["presence_score"]) <= 1 for r in table if r["status"] == "ok")
    archive = write_results_zip(tmp_path / "out", tmp_path / "masks.zip")
    colours = [r["mask"].replace("_mask.png", "_colour.png") for r in rows if r["mask"]]
    assert sorted(zipfile.ZipFile(archive).namelist()) == sorted(
        [r["mask"] for r in rows if r["mask"]] + [r["overlay"] for r in rows if r["overlay"]] + colours
        + ["statistics.csv"])


def test_folders_are_expanded_to_their_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    for p in EXAMPLES[:2]:
        (tmp_path / "imgs" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert [p.name for p in expand_inputs([tmp_path / "imgs"], tmp_path / "work")] == sorted(p.name for p in
                                                                                            EXAMPLES[:2])


def test_segment_command_help_exit_status_and_multiclass_masks(tmp_path, capsys):
    import torch

    from medseg_core import create_model
    from medseg_core.batch import main
    from medseg_core.predict_folder import main as predict_folder_main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "zip" in capsys.readouterr().out
    torch.manual_seed(0)
    create_model("unet", **{**TINY_UNET, "num_classes": 3}).save_pretrained(tmp_path / "three")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(EXAMPLES[0].read_bytes())
    (tmp_path / "in" / "b.png").write_bytes(b"not an image")
    assert predict_folder_main(["--model", str(tmp_path / "three"), "--images", str(tmp_path / "in"), "--out",
                                str(tmp_path / "out"), "--no-progress"]) == 0
    mask = cv2.imread(str(tmp_path / "out" / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 1, 2}, "multi-class masks hold class indices"
    (tmp_path / "in" / "a.jpg").unlink()
    assert main([str(tmp_path / "in"), "--model", str(tmp_path / "three"), "--out", str(tmp_path / "o2")]) == 1
    assert main([str(EXAMPLES[0]), "--model", "no-such-model", "--out", str(tmp_path / "o3")]) == 2


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


def test_one_list_of_formats_for_uploads_folders_and_zips(tmp_path):
    """Every format io.IMAGE_FORMATS names is read by the upload path and the training path, and taken from folders
    and zips; a missing file says it does not exist, not that it is empty."""
    import PIL.Image

    from medseg_core.inference import ImageInputError, load_image_file
    from medseg_core.io import IMAGE_EXTENSIONS, IMAGE_FORMAT_NAMES, IMAGE_FORMATS

    assert IMAGE_FORMAT_NAMES == "PNG, JPEG, TIFF, BMP, GIF or WebP"
    pil_names = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
    (tmp_path / "imgs").mkdir()
    picture = np.zeros((12, 16, 3), np.uint8)
    picture[:, 8:] = 200
    for ext in IMAGE_EXTENSIONS:
        path = tmp_path / "imgs" / f"x{ext.replace('.', '_')}{ext}"
        PIL.Image.fromarray(picture).save(path, pil_names.get(ext, ext[1:].upper()), **(
            {"lossless": True} if ext == ".webp" else {}))
        assert load_image_file(path).shape == read_image(path).shape == (12, 16, 3), ext
    assert len(IMAGE_EXTENSIONS) == sum(len(v) for v in IMAGE_FORMATS.values()) == 8
    folder = expand_inputs([tmp_path / "imgs"], tmp_path / "work")
    assert sorted(p.suffix for p in folder) == sorted(IMAGE_EXTENSIONS)
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder:
            z.write(p, p.name)
    assert sorted(p.suffix for p in expand_inputs([archive], tmp_path / "work")) == sorted(IMAGE_EXTENSIONS)
    with pytest.raises(ImageInputError, match=r"^nothere\.jpg does not exist"):
        load_image_file(tmp_path / "nothere.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageInputError, match=f"empty.png is empty: upload a {IMAGE_FORMAT_NAMES} image"):
        load_image_file(tmp_path / "empty.png")
    (tmp_path / "note.png").write_text("not an image")
    with pytest.raises(ImageInputError, match=re.escape(f"({IMAGE_FORMAT_NAMES})")):
        load_image_file(tmp_path / "note.png")


def test_predict_folder_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict_folder_main(["--help"])
    assert exit_info.value.code == 0
    assert "--images" in capsys.readouterr().out


def test_predict_folder_writes_masks_and_overlays(tmp_path):
    weights = tmp_path / "weights"
    tiny("aspp_net").save_pretrained(weights)
    images = tmp_path / "images"
    images.mkdir()
    for src in EXAMPLES[:2]:
        shutil.copy(src, images / src.name)
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert predict_folder_main(["--model", str(weights), "--images", str(images), "--out", str(out),
                                "--no-progress"]) == 0
    for src in EXAMPLES[:2]:
        mask = read_mask(out / f"{src.stem}_mask.png")
        overlay = out / f"{src.stem}_overlay.png"
        assert overlay.is_file()
        image = read_image(src)
        assert mask.shape == image.shape[:2] and read_image(overlay).shape == image.shape
    assert not (out / "broken_mask.png").exists()


def test_predict_folder_fails_when_nothing_was_segmented(tmp_path):
    weights = tmp_path / "weights"
    tiny("aspp_net").save_pretrained(weights)
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not an image")
    assert predict_folder_main(["--model", str(weights), "--images", str(images), "--out", str(tmp_path / "o"),
                                "--no-progress"]) == 1


def test_segment_command_under_accelerate_launch_shares_the_files(tiny_weights, tmp_path):
    """Two processes, each a share of the inputs; one statistics.csv in input order, the same files as one process."""
    import os
    import subprocess
    import sys

    inputs = [str(p) for p in EXAMPLES] + [str(EXAMPLES[0])]  # a repeated name gets its own stem
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "medseg_core.batch", *inputs, "--out",
         str(tmp_path / "two"), "--model", str(tiny_weights), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from medseg_core.batch import main

    assert main([*inputs, "--out", str(tmp_path / "one"), "--model", str(tiny_weights), "--no-progress"]) == 0
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    assert sorted(two) == sorted(one) and two == one
    with open(tmp_path / "two" / "statistics.csv") as f:
        assert [r["file"] for r in csv.DictReader(f)] == [os.path.basename(i) for i in inputs]
