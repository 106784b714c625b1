"""The app's handlers, and a launched app answering through gradio_client."""

import json
import re
import shutil
import socket

import numpy as np
import pytest
from bad_inputs import build_corpus
from conftest import EXAMPLES

import medseg_core.hub


@pytest.fixture()
def app_module(monkeypatch, tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copytree(tiny_weights, weights / "tiny_unet.test")
    monkeypatch.setattr(medseg_core.hub, "WEIGHTS_DIR", weights)
    from medseg_core import webapp

    webapp.get_segmenter.cache_clear()
    return webapp


def test_models_come_from_weights_dir_and_env(app_module, monkeypatch):
    monkeypatch.setenv("MEDSEG_HUB_MODELS", "owner/repo-a, owner/repo-b")
    assert app_module.available_models() == ["tiny_unet.test", "owner/repo-a", "owner/repo-b"]
    assert app_module.default_model(["x", "y"]) == "x"
    shipped = ["unet_lite0.polyp_fast", "unet_lite2.polyp"]
    assert app_module.default_model(shipped) == "unet_lite2.polyp"  # images: the most accurate
    assert app_module.default_model(shipped, video=True) == "unet_lite0.polyp_fast"  # video: the fast one
    assert app_module.default_model(["unet_lite2.polyp", "y"], video=True) == "unet_lite2.polyp"
    monkeypatch.setenv("MEDSEG_VIDEO_MODEL", "y")
    assert app_module.default_model(["unet_lite2.polyp", "y"], video=True) == "y"


def test_segment_handler(app_module):
    mask_path = EXAMPLES[0].with_name(EXAMPLES[0].stem + "_mask.png")
    slider, heat, summary, mask_file, report, report_file, disagreement, views = app_module.segment(
        str(EXAMPLES[0]), "tiny_unet.test", True, True, str(mask_path), True)
    assert disagreement.shape == heat.shape and len(views) == 4
    before, after = slider
    assert before.shape == after.shape == heat.shape
    assert "Lesion area" in summary and "Dice" in summary
    saved = json.loads(open(report_file).read())
    assert saved == report and saved["model"] == "tiny_unet.test" and "ground_truth" in saved
    import cv2

    mask = cv2.imread(mask_file, cv2.IMREAD_UNCHANGED)
    assert mask.shape == before.shape[:2] and set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("model", ["../../etc", "/tmp/some/folder", "not-a-model"])
def test_model_names_cannot_be_paths(app_module, model):
    import gradio as gr

    with pytest.raises(gr.Error, match="Unknown model"):
        app_module.segment(str(EXAMPLES[0]), model, False, False)


def test_missing_upload_and_bad_files_raise_clear_errors(app_module, tmp_path):
    import gradio as gr

    with pytest.raises(gr.Error, match="Upload an image"):
        app_module.segment(None, "tiny_unet.test", False, False)
    corpus = build_corpus(tmp_path, huge=False)
    with pytest.raises(gr.Error, match="not an image"):
        app_module.segment(str(corpus["text_renamed.png"][0]), "tiny_unet.test", False, False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launched_app_answers_gradio_client(app_module, tmp_path):
    from gradio_client import Client, handle_file

    demo = app_module.build_demo()
    demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
        max_file_size=app_module.MAX_UPLOAD)
    try:
        client = Client(demo.local_url, verbose=False)
        out = client.predict(handle_file(str(EXAMPLES[1])), "tiny_unet.test", False, False, None,
                             api_name="/segment")
        slider, heat, summary, mask_file, report, report_file, disagreement, views = out
        assert disagreement is None
        from medseg_core.io import read_image

        h, w = read_image(EXAMPLES[1]).shape[:2]
        assert "Lesion area" in summary and report["image_size"] == [w, h]
        assert json.load(open(report_file))["lesion_pixels"] == report["lesion_pixels"]
        corpus = build_corpus(tmp_path)
        for name, (path, (kind, detail)) in corpus.items():
            if kind == "error":
                with pytest.raises(Exception, match=detail):
                    client.predict(handle_file(str(path)), "tiny_unet.test", False, False, None, api_name="/segment")
            else:
                res = client.predict(handle_file(str(path)), "tiny_unet.test", False, False, None,
                                     api_name="/segment")
                assert res[4]["image_size"] == [detail[1], detail[0]], name
        # The server is still up and answers the next good request.
        again = client.predict(handle_file(str(EXAMPLES[0])), "tiny_unet.test", True, True, None,
                               api_name="/segment")
        assert again[4]["tta"] is True
    finally:
        demo.close()


def test_compare_handler(app_module):
    gallery, table = app_module.compare(str(EXAMPLES[0]), ["tiny_unet.test", "tiny_unet.test"], False, False)
    assert len(gallery) == 1 and "tiny_unet.test" in table  # duplicates are dropped
    import gradio as gr

    with pytest.raises(gr.Error, match="between one and four"):
        app_module.compare(str(EXAMPLES[0]), [], False, False)


class _NoProgress:
    """Stands in for gr.Progress outside a running event."""

    def tqdm(self, items, desc=None):
        return items

    def __call__(self, *args, **kwargs):
        return None


def test_batch_handler(app_module, tmp_path):
    import zipfile

    corpus = build_corpus(tmp_path, huge=False)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(EXAMPLES[0], EXAMPLES[0].name)
    zip_out, csv_out, table, status = app_module.batch(
        [str(archive), str(EXAMPLES[1]), str(corpus["zero_bytes.png"][0])], "tiny_unet.test", False, False,
        progress=_NoProgress())
    assert status == "2 of 3 images segmented."
    assert [row[1] for row in table] == ["ok", "ok", "error"]
    assert "statistics.csv" in zipfile.ZipFile(zip_out).namelist()


def test_batch_tab_and_segment_command_write_identical_files(app_module, tmp_path):
    """One engine: the Batch tab's zip and medseg-segment's folder hold byte-identical masks, overlays and CSV."""
    import zipfile

    from medseg_core.batch import main as segment_main

    inputs = [str(p) for p in EXAMPLES[:2]]
    for post, flag in ((False, "none"), (True, "recorded")):
        zip_out, *_ = app_module.batch(inputs, "tiny_unet.test", True, post, progress=_NoProgress())
        cli_out = tmp_path / f"cli-{flag}"
        assert segment_main([*inputs, "--out", str(cli_out), "--model", "tiny_unet.test", "--tta", "--postprocess",
                             flag, "--no-progress"]) == 0
        with zipfile.ZipFile(zip_out) as z:
            from_app = {name: z.read(name) for name in z.namelist()}
        from_cli = {p.name: p.read_bytes() for p in cli_out.iterdir()}
        assert sorted(from_app) == sorted(from_cli) and len(from_app) == 7  # 2 x (mask, colour, overlay), CSV
        assert from_app == from_cli


def test_elem_ids_are_unique_and_the_compare_label_matches_its_check(app_module):
    demo = app_module.build_demo()
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    assert len(ids) == len(set(ids)), sorted(ids)
    labels = [b.label for b in demo.blocks.values() if getattr(b, "label", None)]
    assert "Models (1-4)" in labels and "Models (2-4)" not in labels
    # Single images get the most accurate setting (flip TTA) by default; folders and zips the fast one.
    tta = {b.elem_id: b.value for b in demo.blocks.values() if str(getattr(b, "elem_id", "")).endswith("-tta")}
    assert tta == {"segment-tta": True, "batch-tta": False}


def test_enhance_handler(app_module):
    views = app_module.enhance(str(EXAMPLES[0]))
    assert [label for _, label in views][0] == "Original" and len(views) == 4
    shapes = {img.shape for img, _ in views}
    assert len(shapes) == 1 and views[1][0].dtype == np.uint8
    assert not np.array_equal(views[0][0], views[1][0])


def test_single_image_handler_from_a_painted_roi(app_module):
    import cv2

    from medseg_core.io import read_image

    image = cv2.resize(read_image(EXAMPLES[0]), (128, 72), interpolation=cv2.INTER_AREA)
    layer = np.zeros((72, 128, 4), np.uint8)
    cv2.circle(layer, (40, 40), 12, (255, 255, 255, 255), -1)
    editor = {"background": np.dstack([image, np.full((72, 128), 255, np.uint8)]), "layers": [layer],
              "composite": None}
    overlay, summary, mask_file, overlay_file, record_file = app_module.single_image(editor, None, 5,
                                                                                     progress=_NoProgress())
    assert overlay.shape == image.shape and "Lesion area" in summary and "normal tissue" not in summary
    mask = cv2.imread(mask_file, cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (72, 128) and json.load(open(record_file))["patches"]
    import gradio as gr

    with pytest.raises(gr.Error, match="Paint the region"):
        app_module.single_image({**editor, "layers": [np.zeros_like(layer)]}, None, 5, progress=_NoProgress())
    with pytest.raises(gr.Error, match="Upload an image"):
        app_module.single_image(None, None, 5, progress=_NoProgress())


def test_segment_tab_runs_dynasiam_weights(app_module):
    """Any DynaSiam weights in the weights folder run in the Segment tab: the Segmenter builds the views."""
    import torch
    from test_models_dynasiam import tiny_dynasiam

    torch.manual_seed(0)
    tiny_dynasiam().save_pretrained(medseg_core.hub.WEIGHTS_DIR / "tiny_dynasiam.test")
    assert "tiny_dynasiam.test" in app_module.available_models()
    slider, heat, _, _, report, _, _, views = app_module.segment(str(EXAMPLES[0]), "tiny_dynasiam.test", False,
                                                                 False, None, True)
    assert report["arch"] == "dynasiam" and len(views) == 4
    assert slider[1].shape == heat.shape


def test_postprocess_toggle_applies_the_recorded_chain(app_module):
    from medseg_core.hub import record_postprocess

    record_postprocess(medseg_core.hub.WEIGHTS_DIR / "tiny_unet.test", ["fill_holes"])
    app_module.get_segmenter.cache_clear()
    report = app_module.segment(str(EXAMPLES[0]), "tiny_unet.test", False, True)[4]
    assert report["postprocess"] == ["fill_holes"]
    assert app_module.segment(str(EXAMPLES[0]), "tiny_unet.test", False, False)[4]["postprocess"] == []


def test_video_handler_returns_the_clip_plot_and_csv(app_module, data_root, tmp_path):
    import csv

    import gradio as gr

    from medseg_core.io import read_image
    from medseg_core.video import encode_video

    frames = [read_image(data_root / "cvc-clinicdb" / "images" / f"{i}.png") for i in range(1, 9)]
    clip = encode_video(frames, tmp_path / "clip.mp4", fps=8)
    out, plot, csv_path, summary = app_module.video(str(clip), "tiny_unet.test", 0.0, progress=_NoProgress())
    assert out.endswith(".mp4") and plot.ndim == 3 and "8 frames" in summary and "frames per second" in summary
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(8)) and "lesion_percent" in rows[0]
    (tmp_path / "not_a_video.mp4").write_text("hello")
    with pytest.raises(gr.Error, match="not a video|could not|cannot"):
        app_module.video(str(tmp_path / "not_a_video.mp4"), "tiny_unet.test", 0.0, progress=_NoProgress())
    with pytest.raises(gr.Error, match="Upload a video"):
        app_module.video(None, "tiny_unet.test", 0.0, progress=_NoProgress())


def test_an_example_image_is_shown_with_the_model_for_its_kind_of_image(app_module):
    from pathlib import Path

    models = ["unet_lite0.edd2020", "unet_lite0.polyp_fast", "unet_lite2.neopolyp", "unet_lite2.polyp"]
    assert app_module.example_model(Path("examples/edd2020_ACB0004.jpg"), models) == "unet_lite0.edd2020"
    assert app_module.example_model(Path("examples/polypgen_C3_EndoCV2021_00394.jpg"), models) == "unet_lite2.polyp"
    assert app_module.example_model(Path("examples/edd2020_ACB0004.jpg"), ["tiny_unet.test"]) == "tiny_unet.test"
    shipped = {p.name.split("_", 1)[0] for p in app_module.EXAMPLES}
    assert {"polypgen", "edd2020"} <= shipped


def test_every_api_endpoint_names_its_inputs_and_outputs(app_module):
    """The "Use via API" page labels each value by its component's label (``value_20`` for one without)."""
    info = app_module.build_demo().get_api_info()["named_endpoints"]
    assert {"/segment", "/compare", "/batch", "/single_image", "/video", "/enhance"} <= set(info)
    unlabelled = [f"{name} -> {value['label']}" for name, endpoint in info.items()
                  for value in [*endpoint["parameters"], *endpoint["returns"]]
                  if re.fullmatch(r"value_\d+", str(value.get("label")))]
    assert not unlabelled, unlabelled


def test_uploads_and_the_header_name_the_one_list_of_formats(app_module):
    import gradio as gr

    from medseg_core.io import IMAGE_EXTENSIONS, IMAGE_FORMAT_NAMES

    demo = app_module.build_demo()
    files = {b.elem_id or b.label: b.file_types for b in demo.blocks.values() if isinstance(b, gr.File)}
    images = {k: v for k, v in files.items() if v and ".png" in v}
    assert len(images) >= 6, files
    assert all(set(v) - {".zip", ".json"} == set(IMAGE_EXTENSIONS) for v in images.values()), images
    text = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert f"({IMAGE_FORMAT_NAMES};" in text and "PNG, JPEG, TIFF, BMP;" not in text


def test_models_say_what_they_are_for_in_the_list_the_summary_and_compare(app_module, tiny_weights, tiny_3class,
                                                                          monkeypatch):
    """The model list shows each model's intended use (values stay plain names), a result shows it beside it, and
    Compare opens with the default model and one of the same modality and task, never a gastroscopy model beside a
    colonoscopy one."""
    import gradio as gr

    weights = medseg_core.hub.WEIGHTS_DIR
    purposes = {"a.polyp": ("colonoscopy", "Colonoscopy polyps in still images (most accurate)."),
                "b.edd2020": ("gastroscopy", "Barrett's oesophagus in gastroscopy frames."),
                "c.neopolyp": ("colonoscopy", "Colonoscopy polyps, neoplastic or not."),
                "d.polyp_fast": ("colonoscopy", "Colonoscopy polyps in video.")}
    for name, (modality, use) in purposes.items():
        shutil.copytree(tiny_3class if name == "c.neopolyp" else tiny_weights, weights / name)
        config = json.loads((weights / name / "config.json").read_text())
        config.update(modality=modality, intended_use=use)
        (weights / name / "config.json").write_text(json.dumps(config))
    models = app_module.available_models()
    choices = dict(app_module.model_choices(models))
    assert choices["a.polyp: Colonoscopy polyps in still images (most accurate)"] == "a.polyp"
    assert choices["tiny_unet.test"] == "tiny_unet.test"  # no recorded purpose: the plain name
    monkeypatch.setenv("MEDSEG_DEFAULT_MODEL", "a.polyp")
    assert app_module.compare_defaults(models) == ["a.polyp", "d.polyp_fast"]  # same modality and task
    monkeypatch.setenv("MEDSEG_DEFAULT_MODEL", "b.edd2020")
    assert app_module.compare_defaults(models) == ["b.edd2020", "tiny_unet.test"]  # never a colonoscopy model
    monkeypatch.setenv("MEDSEG_DEFAULT_MODEL", "a.polyp")
    demo = app_module.build_demo()
    dropdowns = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)}
    assert dropdowns["compare-models"].value == ["a.polyp", "d.polyp_fast"]
    for key in ("segment-model", "batch-model", "video-model", "compare-models"):
        assert ("a.polyp: Colonoscopy polyps in still images (most accurate)", "a.polyp") in dropdowns[key].choices
    assert dropdowns["segment-model"].preprocess("a.polyp") == "a.polyp"
    out = app_module.segment(str(EXAMPLES[0]), "a.polyp", False, False)
    summary, report = out[2], out[4]
    assert ("**Intended use:** Colonoscopy polyps in still images (most accurate). Made for colonoscopy images"
            in summary)
    assert report["intended_use"] == purposes["a.polyp"][1] and report["modality"] == "colonoscopy"
    assert "Intended use" not in app_module.segment(str(EXAMPLES[0]), "tiny_unet.test", False, False)[2]


def test_handled_user_errors_are_logged_as_one_line_without_a_traceback(app_module, capfd, caplog):
    from gradio_client import Client

    demo = app_module.build_demo()
    demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        with caplog.at_level("INFO", logger="medseg.app"):
            for args in [(None, "tiny_unet.test"), (None, None)]:
                with pytest.raises(Exception, match="Upload an image first"):
                    client.predict(*args, False, False, None, api_name="/segment")
    finally:
        demo.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "gradio.exceptions.Error" not in err, err[-2000:]
    lines = [r.getMessage() for r in caplog.records if r.name == "medseg.app"]
    assert lines.count("user error: Upload an image first (or pick one of the examples).") == 2, lines
    assert issubclass(app_module.UserError, __import__("gradio").Error)


def test_batch_api_takes_a_single_file_as_well_as_a_list(app_module):
    """``/batch`` through gradio_client with one file (not wrapped in a list), with a list, and the handler with a
    plain path: each segments what it was given."""
    from gradio_client import Client, handle_file

    assert app_module.batch(str(EXAMPLES[0]), "tiny_unet.test", False, False, progress=_NoProgress())[3] == \
        "1 of 1 images segmented."
    demo = app_module.build_demo()
    demo.queue(default_concurrency_limit=2).launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        one = client.predict(handle_file(str(EXAMPLES[0])), "tiny_unet.test", False, False, api_name="/batch")
        two = client.predict([handle_file(str(p)) for p in EXAMPLES[:2]], "tiny_unet.test", False, False,
                             api_name="/batch")
    finally:
        demo.close()
    assert one[3] == "1 of 1 images segmented." and two[3] == "2 of 2 images segmented."
    assert [row[0] for row in one[2]["data"]] == [EXAMPLES[0].name]


def test_the_overlay_shown_carries_its_colour_key_and_the_files_do_not(app_module, tmp_path):
    from medseg_core.batch import segment_files
    from medseg_core.io import read_image
    from medseg_core.visualize import draw_legend

    segmenter = app_module.get_segmenter("tiny_unet.test")
    (before, after), *_ = app_module.segment(str(EXAMPLES[0]), "tiny_unet.test", False, False)
    overlay = segmenter(read_image(EXAMPLES[0]), postprocess="none").overlay
    assert np.array_equal(after, draw_legend(overlay, segmenter.schema)) and not np.array_equal(after, overlay)
    colour = segmenter.schema.foreground_colours[0]
    h, w = after.shape[:2]
    assert (after[: h // 3, : w // 3] == colour).all(axis=2).sum() >= 4, "no swatch in the top-left corner"
    gallery, _ = app_module.compare(str(EXAMPLES[0]), ["tiny_unet.test"], False, False)
    assert np.array_equal(gallery[0][0], after)
    segment_files(segmenter, [EXAMPLES[0]], tmp_path, postprocess="none")  # files written by batch: no key
    assert np.array_equal(read_image(tmp_path / f"{EXAMPLES[0].stem}_overlay.png"), overlay)


def test_segment_examples_show_thumbnails_that_fill_the_upload_and_the_preview(app_module):
    """gr.Examples shows a gr.File input as its file name; the Segment tab's examples lead with the preview image,
    so each shows as a picture, and a click fills the upload, the preview and the model."""
    import gradio as gr

    demo = app_module.build_demo()
    preview = next(b for b in demo.blocks.values() if isinstance(b, gr.Image) and b.label == "Uploaded image")
    upload = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "segment-upload")
    datasets = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset) and upload in b._components]
    assert len(datasets) == 1
    dataset = datasets[0]
    assert dataset._components[0] is preview and [type(c).__name__ for c in dataset._components] == [
        "Image", "File", "Dropdown"]
    assert len(dataset.samples) == len(app_module.EXAMPLES)
    for sample, path in zip(dataset.samples, app_module.EXAMPLES):
        picture, name, model = sample
        assert picture["orig_name"] == name == path.name and picture["url"].endswith(path.name)
        assert model == app_module.example_model(path, app_module.available_models())
