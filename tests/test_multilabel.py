"""Label schemas end to end on the real new data: EDD2020 multi-label (train 2 steps, evaluate, serve) and the
uwmgi-mini MRI slices as a 4-class model (palette masks and the same masks as a run-length CSV)."""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT

from medseg_core import Segmenter, load_model, training
from medseg_core.evaluation import main as evaluate
from medseg_core.io import read_image, read_mask, write_rle_csv
from medseg_core.labels import LabelSchema

EDD_RECIPE = ROOT / "train" / "configs" / "unet_lite0_edd2020.yaml"
EDD_CLASSES = ["BE", "suspicious", "HGD", "cancer", "polyp"]
UWMGI_LABELS = ["--labels.task", "multiclass", "--labels.class_names",
                "[background, large_bowel, small_bowel, stomach]",
                "--labels.colours", "[[0, 0, 0], [0, 255, 0], [255, 255, 0], [255, 0, 0]]"]


def tiny(data_root, out, config, *extra):
    return ["--config", str(config), "--output-dir", str(out), "--max-steps", "2", "--no-progress",
            "--data.root", str(data_root), "--data.cache_max_side", "96", "--train.max_train_samples", "4",
            "--train.max_val_samples", "3", "--train.batch_size", "2", "--model.input_size", "64",
            "--model.decoder_channels", "[16, 16, 16, 16, 8]", "--model.encoder_weights", "random", *extra]


@pytest.fixture(scope="module")
def edd_model(data_root, tmp_path_factory):
    torch.manual_seed(0)
    return training.main(tiny(data_root, tmp_path_factory.mktemp("edd"), EDD_RECIPE))


def test_a_multilabel_model_trains_and_records_its_schema(edd_model):
    config = json.loads((edd_model / "config.json").read_text())
    assert config["task"] == "multilabel" and config["class_names"] == EDD_CLASSES
    assert config["mask_encoding"] == "per_class_files" and load_model(edd_model).num_classes == 5
    assert "`multilabel`, classes `BE`" in (edd_model / "README.md").read_text()


def test_evaluate_writes_every_class_of_the_schema(edd_model, data_root, tmp_path):
    split = tmp_path / "four.txt"
    split.write_text("".join(f"{i}\n" for i in (data_root / "splits/edd-test.txt").read_text().split()[:4]))
    out = evaluate(["--model", str(edd_model), "--data", str(data_root), "--split", str(split), "--json",
                    str(tmp_path / "edd.json")])
    saved = json.loads((tmp_path / "edd.json").read_text())
    for name in EDD_CLASSES:
        assert {f"dice_{name}", f"iou_{name}", f"class_dice_{name}"} <= set(saved), name
    assert {"dice", "iou", "accuracy", "mdice", "class_dice"} <= set(saved) and saved["n"] == 4
    assert saved["mdice"] == pytest.approx(np.mean([saved[f"dice_{n}"] for n in EDD_CLASSES]))
    assert saved["class_dice"] == pytest.approx(np.mean([saved[f"class_dice_{n}"] for n in EDD_CLASSES]))
    assert out["labels"]["task"] == "multilabel"


def test_a_multilabel_segmenter_returns_overlapping_planes(edd_model, example_image, tmp_path):
    seg = Segmenter.from_pretrained(edd_model, device="cpu", threshold=0.0)  # every pixel of every class
    result = seg(example_image)
    assert result.mask.shape == (5, *example_image.shape[:2]) and result.mask.all()
    assert result.probs.shape == (5, *example_image.shape[:2]) and result.confidence.shape == example_image.shape[:2]
    assert list(result.stats["classes"]) == EDD_CLASSES and result.stats["lesion_percent"] == 100.0
    from medseg_core.batch import segment_files

    rows = segment_files(seg, [ROOT / "examples" / "polypgen_C3_EndoCV2021_00394.jpg"], tmp_path / "out")
    assert rows[0]["status"] == "ok" and all(f"percent_{n}" in rows[0] for n in EDD_CLASSES)
    assert (tmp_path / "out" / "polypgen_C3_EndoCV2021_00394_HGD.png").is_file()
    header = (tmp_path / "out" / "statistics.csv").read_text().splitlines()[0]
    assert "percent_cancer" in header


def test_uwmgi_mini_trains_as_four_classes_from_palette_and_from_rle(data_root, tmp_path):
    recipe = ROOT / "train" / "configs" / "unet_lite0_polyp.yaml"
    common = ["--model.num_classes", "4", "--data.train_split", "uwmgi-mini", "--data.val_split", "uwmgi-mini",
              *UWMGI_LABELS]
    model_dir = training.main(tiny(data_root, tmp_path / "palette", recipe, *common, "--data.mask_encoding",
                                   "palette"))
    config = json.loads((model_dir / "config.json").read_text())
    assert config["class_names"][3] == "stomach" and config["mask_encoding"] == "palette"
    slice_image = read_image(next((data_root / "uwmgi-mini" / "images").iterdir()))
    assert Segmenter.from_pretrained(model_dir, device="cpu")(slice_image).mask.max() <= 3
    # The same slices with their masks as an id,class,segmentation CSV.
    schema = LabelSchema("multiclass", ("background", "large_bowel", "small_bowel", "stomach"),
                         ((0, 0, 0), (0, 255, 0), (255, 255, 0), (255, 0, 0)), "palette")
    root = tmp_path / "rle"
    (root / "uwmgi" / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    masks = {}
    for path in sorted((data_root / "uwmgi-mini" / "images").iterdir())[:6]:
        (root / "uwmgi" / "images" / path.name).write_bytes(path.read_bytes())
        masks[path.stem] = read_mask(data_root / "uwmgi-mini" / "masks" / path.name, "palette", schema)
    write_rle_csv(root / "uwmgi" / "masks.csv", masks, schema.foreground)
    (root / "splits" / "all.txt").write_text("".join(f"uwmgi/{k}\n" for k in masks))
    model_dir = training.main(tiny(root, tmp_path / "rle_run", recipe, *common, "--data.mask_encoding", "rle_csv",
                                   "--data.train_split", "all", "--data.val_split", "all"))
    assert json.loads((model_dir / "config.json").read_text())["mask_encoding"] == "rle_csv"


def test_per_class_thresholds_are_checked_and_applied(edd_model):
    from medseg_core.inference import check_thresholds

    seg = Segmenter.from_pretrained(edd_model, device="cpu", threshold=[0.1, 0.2, 0.3, 0.4, 0.5])
    probs = np.broadcast_to(np.array([0.15, 0.15, 0.35, 0.35, 0.45], np.float32)[:, None, None], (5, 2, 3))
    assert seg.mask_from_probs(probs)[:, 0, 0].tolist() == [1, 0, 1, 0, 0]
    schema = seg.schema
    with pytest.raises(ValueError, match="5 classes"):
        check_thresholds([0.5, 0.5], schema)
    with pytest.raises(ValueError, match="from 0 to 1"):
        check_thresholds([0.5, 0.5, 0.5, 1.5, 0.5], schema)
    with pytest.raises(ValueError, match="multi-label"):
        check_thresholds([0.3, 0.6], LabelSchema("multiclass", ("background", "a", "b")))
    assert check_thresholds(0.3, schema) == 0.3


def test_bad_recorded_thresholds_are_refused(edd_model, tmp_path):
    import shutil

    from medseg_core.hub import record_thresholds, resolve_weights
    from medseg_core.safety import UnsafeWeightsError

    model = tmp_path / "model"
    shutil.copytree(edd_model, model)
    record_thresholds(model, [0.2, 0.4, 0.5, 0.6, 0.5])
    assert Segmenter.from_pretrained(model, device="cpu").threshold == [0.2, 0.4, 0.5, 0.6, 0.5]
    assert Segmenter.from_pretrained(model, device="cpu", threshold=0.5).threshold == 0.5
    with pytest.raises(UnsafeWeightsError, match="thresholds"):
        record_thresholds(model, [0.5, 0.5, 0.5, 2.0, 0.5])
    config = json.loads((model / "config.json").read_text())
    config["thresholds"] = [0.5, 0.5, 0.5, 2.0, 0.5]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeWeightsError, match="thresholds"):
        Segmenter.from_pretrained(resolve_weights(model), device="cpu")


def test_the_shipped_gastroscopy_model_outlines_the_lesion_of_its_example(data_root):
    """weights/unet_lite0.edd2020 on the app's EDD2020 example (a test image, BE and cancer overlapping)."""
    from medseg_core.data import read_sample_mask, read_split
    from medseg_core.metrics import dice_score

    seg = Segmenter.from_pretrained("unet_lite0.edd2020", device="cpu")
    assert seg.schema.multilabel and seg.schema.foreground == tuple(EDD_CLASSES) and len(seg.threshold) == 5
    image = read_image(ROOT / "examples" / "edd2020_ACB0004.jpg")
    sample = next(s for s in read_split(data_root, "edd-test") if s.id == "edd2020/EDD2020_ACB0004")
    truth = read_sample_mask(sample, seg.schema, image.shape[:2])
    result = seg(image, postprocess="none")
    assert result.mask.shape == truth.shape and set(result.stats["classes"]) == set(EDD_CLASSES)
    assert dice_score(result.mask.any(0), truth.any(0)) > 0.5
    card = (ROOT / "weights" / "unet_lite0.edd2020" / "README.md").read_text()
    assert "license: cc-by-nc-sa-4.0" in card and "edd-test (n=77)" in card
