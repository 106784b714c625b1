"""The trust boundary (medseg_core.safety, hub, webapp): hostile weights and model names, image bombs, zip bombs,
malformed ROI files, private temporary files, a shared worker pool with a per-client limit, and cancel."""

import asyncio
import io
import json
import shutil
import stat
import struct
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
from bad_inputs import build_corpus, expected_pixels
from conftest import EXAMPLES

import medseg_core.hub
from medseg_core.hub import UnsafeWeightsError, resolve_hub_weights, resolve_weights
from medseg_core.inference import load_image_file
from medseg_core.safety import (
    ExtractionBudget,
    RejectedInput,
    ZipLimits,
    extract_zip,
    helper_folder,
    make_private,
    remove_older_than,
    validate_model_config,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with no real pixel data: only a header check can be safe with it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND",
                                                                                                            b"")


def _png(arr: np.ndarray) -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# ---- weights configs -------------------------------------------------------------------------------------------


def _config(tiny_weights):
    return json.loads((tiny_weights / "config.json").read_text())


@pytest.mark.parametrize(("change", "reason"), [
    ({"input_size": 2816}, "'input_size' = 2816 is out of range: it must be an integer from 16 to 1024"),
    ({"num_classes": 64}, "'num_classes' = 64 is out of range: it must be an integer from 1 to 32"),
    ({"num_classes": -1}, "'num_classes' = -1 is out of range"),
    ({"input_size": "352"}, "'input_size' = 352 is not of type int"),
    ({"decoder_channels": [16, 16, 16, 16, 100000]}, "'decoder_channels' = [16, 16, 16, 16, 100000] is out of range"),
    ({"mean": [0.5, float("nan"), 0.5]}, "'mean' = [0.5, nan, 0.5] is not a finite number"),
    ({"std": [0.5, 0.0, 0.5]}, "'std' = [0.5, 0.0, 0.5] must be positive"),
    ({"encoder": "../../etc/passwd"}, "'encoder' = ../../etc/passwd is not a plain name"),
    ({"exec_hook": "x"}, "unknown field 'exec_hook'"),
    ({"arch": "not_an_arch"}, "'arch' = 'not_an_arch' is not a known architecture"),
    ({"refiner": "../../.."}, "'refiner' = '../../..' must name a sub-folder"),
    ({"refiner": "/etc"}, "'refiner' = '/etc' must name a sub-folder"),
    ({"refiner": "owner/other-repo"}, "must name a sub-folder"),
    ({"tta_scales": [1.0, 40.0]}, "'tta_scales' = [1.0, 40.0] must list one to eight factors from 0.5 to 2"),
    ({"tta_scales": [1.0] * 100}, "'tta_scales'"),
    ({"modality": "Colonoscopy<script>"}, "'modality' = 'Colonoscopy<script>' must be a lower-case word or two"),
    ({"modality": ["colonoscopy"]}, "'modality' must be a str"),
    ({"intended_use": "Polyps. [Click here](http://x)"}, "'intended_use' = 'Polyps. [Click here](http://x)' must be "
                                                         "one short sentence of plain text"),
    ({"intended_use": "x" * 161}, "'intended_use'"),
    ({"intended_use": "two\nlines"}, "'intended_use'"),
    ({"std": [0, 0, 0]}, "'std' = [0, 0, 0] must be positive"),
    ({"mean": [0.5]}, "'mean' = [0.5] must list one number per channel (3 numbers)"),
    ({"mean": [0.5, 0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5, 0.5]}, "'mean' = [0.5, 0.5, 0.5, 0.5] must list one "
                                                                  "number per channel"),
    ({"decoder_channels": [4096] * 5}, "asks for too large a network: layer widths [4096, 4096, 4096, 4096, 4096] "
                                       "need about 755 M weights; the limit is 67 M"),
    ({"decoder_channels": [4096] * 5, "input_size": 352}, "4096 channels at 352 px"),
    ({"decoder_channels": [512] * 5, "input_size": 1024}, "512 channels at 1024 px (input_size 1024, tta_scales "
                                                          "None) is 537 M activations per pass; the limit is 268 M"),
    ({"input_size": 1024, "tta_scales": [1.0, 2.0]}, "'tta_scales' = [1.0, 2.0] takes the network to 2048 px "
                                                     "(input_size 1024); the largest network input is 1024 px"),
])
def test_hostile_config_values_are_refused_naming_the_field(tiny_weights, tmp_path, change, reason, monkeypatch):
    folder = tmp_path / "hostile"
    shutil.copytree(tiny_weights, folder)
    (folder / "config.json").write_text(json.dumps({**_config(tiny_weights), **change}))
    with pytest.raises(UnsafeWeightsError) as err:
        config = validate_model_config(json.loads((folder / "config.json").read_text()), "hostile")
        helper_folder(config, "hostile")
    assert reason in str(err.value)
    import torch

    built = []
    module_init = torch.nn.Module.__init__
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: built.append(type(self)) or
                        module_init(self, *a, **k))
    with pytest.raises(UnsafeWeightsError, match="config.json"):
        from medseg_core import Segmenter

        Segmenter.from_pretrained(folder)
    assert built == [], "refused only after a model was built"


def test_shipped_and_saved_configs_pass(tiny_weights):
    from conftest import ROOT

    for config_file in [tiny_weights / "config.json", *sorted((ROOT / "weights").glob("*/config.json")),
                        *sorted((ROOT / "weights").glob("*/*/config.json"))]:
        config = json.loads(config_file.read_text())
        assert validate_model_config(config, config_file.parent.name) is config
        helper_folder(config)
    # Within the cost budget: the widest shipped decoder at the largest input size, and TTA up to that size.
    tiny = json.loads((tiny_weights / "config.json").read_text())
    for change in ({"decoder_channels": [256, 128, 64, 32, 16], "input_size": 1024},
                   {"input_size": 512, "tta_scales": [0.82, 1.0, 1.18, 2.0]}, {"std": [1, 1, 1], "mean": [0, 0, 0]}):
        validate_model_config({**tiny, **change}, "in budget")


def test_shipped_models_say_what_they_are_for_in_config_and_card(tmp_path, tiny_weights):
    """Each shipped weights folder records its modality and intended use (plain text that validation accepts), and
    its model card carries them in an "Intended use" section, as write_model_card writes it."""
    from conftest import ROOT

    from medseg_core.hub import intended_use_markdown, write_model_card

    folders = sorted(p.parent for p in (ROOT / "weights").glob("*/config.json"))
    assert len(folders) >= 5
    modalities = {}
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert validate_model_config(config, folder.name) is config
        modalities[folder.name] = config["modality"]
        assert config["intended_use"].endswith(".") and len(config["intended_use"]) <= 160, folder.name
        card = (folder / "README.md").read_text()
        assert intended_use_markdown(config).strip() in card, folder.name
        assert card.index("## Intended use") < card.index("## Data"), folder.name
    assert modalities["unet_lite2.polyp"] == modalities["unet_lite0.polyp_fast"] == "colonoscopy"
    assert modalities["unet_lite0.edd2020"] == "gastroscopy"
    config = {**_config(tiny_weights), "modality": "colonoscopy", "intended_use": "Polyps in still images."}
    card = write_model_card(tmp_path, name="tiny", config=config, data="d", recipe="r").read_text()
    assert "## Intended use\n- Modality: colonoscopy.\n- Intended use: Polyps in still images.\n" in card
    assert "## Intended use" not in write_model_card(tmp_path, name="tiny", config=_config(tiny_weights), data="d",
                                                     recipe="r").read_text()


# ---- Hub downloads ---------------------------------------------------------------------------------------------


@pytest.fixture()
def hub_cache(tmp_path, tiny_weights):
    """A huggingface_hub cache holding medseg/tiny-unet at COMMIT (refs/main -> COMMIT) with a refiner and junk."""
    from medseg_core import create_model

    repo = tmp_path / "cache" / "models--medseg--tiny-unet"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_weights / f, snapshot / f)
    create_model("refiner", widths=[8, 16], input_size=32).save_pretrained(snapshot / "refiner")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "cache"


def test_hub_download_takes_only_weights_files_and_a_pinned_revision(hub_cache):
    from medseg_core.hub import _download_patterns

    assert _download_patterns(None) == ["config.json", "model.safetensors", "README.md", "model.onnx"]
    assert _download_patterns("refiner")[-2:] == ["refiner/config.json", "refiner/model.safetensors"]
    assert resolve_hub_weights(f"medseg/tiny-unet@{COMMIT}", cache_dir=hub_cache).name == COMMIT
    assert resolve_hub_weights("medseg/tiny-unet", cache_dir=hub_cache).name == COMMIT
    with pytest.raises(medseg_core.hub.WeightsNotFoundError, match="not in the local cache"):
        resolve_hub_weights("medseg/tiny-unet@v9.9", cache_dir=hub_cache)
    for bad in ("../x", "/etc/passwd", "a/b/c", "owner/name@../../x", "weights/../x"):
        with pytest.raises(medseg_core.hub.WeightsNotFoundError, match="not a Hub repo id"):
            resolve_hub_weights(bad, cache_dir=hub_cache)


def test_hub_size_cap_before_and_after_download(hub_cache, monkeypatch):
    from types import SimpleNamespace

    from medseg_core import hub

    monkeypatch.setattr(hub, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(UnsafeWeightsError, match="the limit is 0 MB"):
        resolve_hub_weights("medseg/tiny-unet", cache_dir=hub_cache)  # cached copy: measured on disk
    info = SimpleNamespace(siblings=[SimpleNamespace(rfilename="model.safetensors", size=5_000_000_000),
                                     SimpleNamespace(rfilename="other/huge.bin", size=10**12)])
    monkeypatch.setattr(hub.HfApi, "model_info", lambda self, *a, **k: info)
    monkeypatch.setattr(hub, "MAX_DOWNLOAD_BYTES", 1_000_000_000)
    with pytest.raises(UnsafeWeightsError, match="the weights are 5000 MB; the limit is 1000 MB"):
        hub._check_remote_size("owner/big", None, hub._download_patterns(None), None)


def test_hub_config_is_validated_before_the_weights_are_fetched(hub_cache, tiny_weights):
    snapshot = hub_cache / "models--medseg--tiny-unet" / "snapshots" / COMMIT
    (snapshot / "config.json").write_text(json.dumps({**_config(tiny_weights), "input_size": 2816}))
    with pytest.raises(UnsafeWeightsError, match="medseg/tiny-unet: config.json field 'input_size' = 2816"):
        resolve_weights("medseg/tiny-unet", cache_dir=hub_cache)


# ---- the model box -----------------------------------------------------------------------------------------------


@pytest.fixture()
def app(monkeypatch, tiny_weights, tmp_path):
    from medseg_core import create_model, webapp

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copytree(tiny_weights, weights / "tiny_unet.test")
    create_model("refiner", widths=[8, 16], input_size=32).save_pretrained(weights / "tiny_unet.test" / "refiner")
    monkeypatch.setattr(medseg_core.hub, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(webapp, "OUTPUT_DIR", tmp_path / "outputs")
    monkeypatch.delenv("MEDSEG_ALLOW_ANY_HUB_MODEL", raising=False)
    monkeypatch.delenv("MEDSEG_HUB_MODELS", raising=False)
    monkeypatch.chdir(weights.parent)  # so that "weights/tiny_unet.test" is a real relative path
    webapp.get_segmenter.cache_clear()
    yield webapp
    webapp.get_segmenter.cache_clear()


def _message(app, name):
    import gradio as gr

    with pytest.raises(gr.Error) as err:
        app.segment(str(EXAMPLES[0]), name, False, False)
    return str(err.value.message)


@pytest.mark.parametrize("any_hub", [False, True])
def test_every_unknown_or_refused_name_gets_one_message_without_paths(app, monkeypatch, tmp_path, any_hub):
    if any_hub:
        monkeypatch.setenv("MEDSEG_ALLOW_ANY_HUB_MODEL", "1")
    names = ["weights/tiny_unet.test", "tiny_unet.test/refiner", "../../etc", str(tmp_path / "weights" /
             "tiny_unet.test"), "/etc/passwd", "not-a-model", "owner/never-cached", "weights/no-such-folder"]
    messages = {name: _message(app, name) for name in names}
    for name, text in messages.items():
        assert text == f"Unknown model {name!r}: choose one from the list" + (
            " or type a Hugging Face Hub repo id (owner/name)." if any_hub else "."), text
    assert app.segment(str(EXAMPLES[0]), "tiny_unet.test", False, False)[4]["model"] == "tiny_unet.test"


def test_a_listed_model_with_a_hostile_config_is_refused_by_field(app, tiny_weights):
    folder = medseg_core.hub.WEIGHTS_DIR / "tiny_unet.test"
    (folder / "config.json").write_text(json.dumps({**_config(tiny_weights), "input_size": 2816}))
    text = _message(app, "tiny_unet.test")
    assert text == ("Model 'tiny_unet.test' was refused: …: config.json field 'input_size' = 2816 is out of range: "
                    "it must be an integer from 16 to 1024") or "'input_size' = 2816 is out of range" in text
    assert str(folder.parent) not in text and "/tmp" not in text


def test_pinned_hub_models_come_from_the_operator_list(app, monkeypatch, hub_cache):
    monkeypatch.setenv("MEDSEG_HUB_MODELS", f"medseg/tiny-unet@{COMMIT}")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    resolve_hub = medseg_core.hub.resolve_hub
    monkeypatch.setattr(medseg_core.hub, "resolve_hub", lambda spec, cache_dir=None: resolve_hub(spec, hub_cache))
    assert app.available_models() == ["tiny_unet.test", f"medseg/tiny-unet@{COMMIT}"]
    report = app.segment(str(EXAMPLES[0]), f"medseg/tiny-unet@{COMMIT}", False, False)[4]
    assert report["model"] == f"medseg/tiny-unet@{COMMIT}"
    assert _message(app, "medseg/tiny-unet").startswith("Unknown model")  # not listed without the pin


# ---- images: headers before decoding -----------------------------------------------------------------------------


def test_bad_input_corpus_decodes_to_the_right_pixels_or_says_why(tmp_path):
    from medseg_core.inference import ImageInputError

    for name, (path, (kind, detail)) in build_corpus(tmp_path, huge=False).items():
        assert path.stem.startswith("upload_") and not any(w in path.name for w in ("truncated", "empty", "text"))
        if kind == "error":
            with pytest.raises(ImageInputError) as err:
                load_image_file(path)
            assert detail in str(err.value), (name, str(err.value))
            continue
        image = load_image_file(path)
        assert image.shape[:2] == detail, name
        for (r, c), rgb in (expected_pixels(name) or {}).items():
            assert np.abs(image[r, c].astype(int) - rgb).max() <= 12, (name, (r, c), image[r, c], rgb)


def test_roi_png_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from medseg_core import single_image
    from medseg_core.single_image import read_roi

    decoded = []
    monkeypatch.setattr(single_image.cv2, "imdecode", lambda *a, **k: decoded.append(a) or None)
    bomb = tmp_path / "roi.png"
    bomb.write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(ValueError, match=r"the ROI image roi.png is too large to open safely \(400 MP\); the limit "
                                         "is 40 MP"):
        read_roi(bomb, (100, 100))
    bomb.write_bytes(_png_header_only(8000, 6000))  # below Pillow's own bomb limit, above ours
    with pytest.raises(ValueError, match="the ROI image roi.png is 8000x6000 pixels .48 MP.; the limit is 40 MP"):
        read_roi(bomb, (100, 100))
    bomb.write_bytes(_png_header_only(20000, 2))  # few pixels, but wider than any browser decodes
    with pytest.raises(ValueError, match="the longest side may be at most 16383 pixels"):
        read_roi(bomb, (100, 100))
    assert decoded == [], "the ROI image was decoded before its size was checked"


@pytest.mark.parametrize(("content", "reason"), [
    ("[1, 2, 3]", "must hold a JSON object with a 'shapes' list, not a list"),
    ('{"shapes": null}', "has no 'shapes' list"),
    ('{"shapes": [{"points": [[1, 1], [NaN, 5], [9, 9]], "shape_type": "polygon"}]}',
     "shape 0 has a point that is not a finite number"),
    ('{"shapes": [{"points": [[1, 1], [50, 5]], "shape_type": "line"}]}', "has no polygon, rectangle or circle"),
    ('{"shapes": [{"points": "abc"}]}', "shape 0 has points that are not [x, y]"),
    ('{"shapes": [5]}', "shape 0 is not an object"),
    ('{"shapes": [], "imageWidth": 0}', "imageWidth must be a positive number"),
    ('{"shapes": [{"points": [[1, 1], [1e300, 5], [9, 1e300]]}]}', "has no polygon"),
    ("{not json", "is not valid JSON"),
])
def test_malformed_labelme_gives_the_reason(tmp_path, content, reason):
    from medseg_core.single_image import read_roi

    path = tmp_path / "roi.json"
    path.write_text(content)
    try:
        roi = read_roi(path, (40, 60))
    except ValueError as err:
        assert reason in str(err), str(err)
    else:  # the far-away polygon is clipped, not overflowed: it may cover the image, but it is a valid ROI
        assert reason == "has no polygon" and roi.dtype == bool


def test_editor_images_are_checked_before_decoding(app, tmp_path):
    import gradio as gr

    big = tmp_path / "background.png"
    big.write_bytes(_png_header_only(7500, 6000))  # 45 MP
    with pytest.raises(gr.Error, match="The image is 7500x6000 pixels .45 MP.; the limit is 16 MP"):
        app.single_image({"background": str(big), "layers": [], "composite": None}, None, 5)
    wide = np.broadcast_to(np.zeros((1, 1, 4), np.uint8), (6000, 7500, 4))  # no memory behind it
    with pytest.raises(gr.Error, match="the limit is 16 MP"):
        app.single_image({"background": wide, "layers": []}, None, 5)
    with pytest.raises(gr.Error, match="whole number from 1 to 600"):
        app.single_image({"background": np.zeros((8, 8, 3), np.uint8), "layers": []}, None, 10**9)
    small = tmp_path / "small.png"
    small.write_bytes(_png(np.zeros((40, 60, 3), np.uint8)))
    layer = tmp_path / "layer.png"
    layer.write_bytes(_png_header_only(7500, 6000))
    with pytest.raises(gr.Error, match="A painted layer is 7500x6000"):
        app.single_image({"background": str(small), "layers": [str(layer)]}, None, 5)


def test_an_image_wider_than_16383_px_is_shown_shrunk_and_written_full_size(app, tmp_path):
    import cv2

    wide = tmp_path / "wide.png"
    wide.write_bytes(_png(np.full((2, 20000, 3), 120, np.uint8)))
    (before, after), heat, summary, mask_file, report, *_ = app.segment(str(wide), "tiny_unet.test", False, False)
    assert before.shape[1] <= 4096 and after.shape[1] <= 4096 and heat.shape[1] <= 4096
    assert cv2.imread(mask_file, cv2.IMREAD_UNCHANGED).shape == (2, 20000)
    assert report["image_size"] == [20000, 2]


# ---- zips --------------------------------------------------------------------------------------------------------


def _zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_zip_bomb_member_is_refused_by_ratio_without_unpacking_it(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"a.png": _png(np.zeros((8, 8, 3), np.uint8)),
                                           "b.bmp": b"\0" * 50_000_000})
    assert archive.stat().st_size < 200_000
    paths, total = extract_zip(archive, tmp_path / "out")
    assert [type(p).__name__ for p in paths] == ["PosixPath", "RejectedInput"]
    assert "compressed more than 200:1" in paths[1].reason and total < 1000
    assert not (tmp_path / "out" / "b.bmp").exists()


def test_zip_caps_per_member_and_per_upload_and_per_server(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, 3_000_000, dtype=np.uint8).tobytes()  # incompressible
    a = _zip(tmp_path / "a.zip", {"x.png": noise})
    b = _zip(tmp_path / "b.zip", {"y.png": noise})
    member_cap = ZipLimits(max_member_bytes=2_000_000)
    paths, _ = extract_zip(a, tmp_path / "m", member_cap)
    assert isinstance(paths[0], RejectedInput) and "more than 2 MB (the limit per file)" in paths[0].reason
    from medseg_core.batch import expand_inputs

    with pytest.raises(ValueError, match="b.zip: the archive unpacks to more than 5 MB .the limit per upload."):
        expand_inputs([a, b], tmp_path / "w", limits=ZipLimits(max_total_bytes=5_000_000))
    server = ExtractionBudget(4_000_000)
    with server.request() as first:
        expand_inputs([a], tmp_path / "s1", budget=first)
        with pytest.raises(ValueError, match="the server is unpacking other uploads"), server.request() as second:
            expand_inputs([b], tmp_path / "s2", budget=second)
    assert server.used == 0  # given back when the requests ended


def test_a_member_with_a_bad_crc_is_one_error_row(tmp_path, tiny_unet):
    from medseg_core import Segmenter
    from medseg_core.batch import expand_inputs, segment_files

    good = EXAMPLES[0].read_bytes()
    archive = _zip(tmp_path / "two.zip", {"good.jpg": good, "bad.jpg": good}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    second = data.find(good, data.find(good) + 1)
    data[second + 1000] ^= 0xFF  # corrupt the stored bytes of bad.jpg: its CRC no longer matches
    archive.write_bytes(bytes(data))
    paths = expand_inputs([archive], tmp_path / "work")
    rows = segment_files(Segmenter(tiny_unet, device="cpu"), paths, tmp_path / "out")
    assert [(r["file"], r["status"]) for r in rows] == [("good.jpg", "ok"), ("bad.jpg", "error")]
    assert "bad.jpg in two.zip could not be unpacked (damaged archive member: Bad CRC-32" in rows[1]["error"]
    assert "bad.jpg" in (tmp_path / "out" / "statistics.csv").read_text()


def test_batch_outputs_are_private_and_inputs_removed(app, tmp_path):
    class _NoProgress:
        def tqdm(self, items, desc=None):
            return items

    archive = _zip(tmp_path / "imgs.zip", {"a.jpg": EXAMPLES[0].read_bytes()})
    zip_out, csv_out, table, status = app.batch([str(archive)], "tiny_unet.test", False, False,
                                                progress=_NoProgress())
    folder = app.OUTPUT_DIR / next(p.name for p in app.OUTPUT_DIR.iterdir())
    assert stat.S_IMODE(app.OUTPUT_DIR.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
    assert not (folder / "inputs").exists() and status == "1 of 1 images segmented."


def test_private_and_short_lived(tmp_path):
    import os

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    make_private(tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o600
    old = time.time() - 3600
    os.utime(tmp_path / "d", (old, old))
    (tmp_path / "new").mkdir()
    assert remove_older_than(tmp_path, 600) == 1 and [p.name for p in tmp_path.iterdir()] == ["new"]


# ---- the server --------------------------------------------------------------------------------------------------


def test_heavy_events_share_one_pool_sized_to_the_cores(app):
    demo = app.configure_queue(app.build_demo())
    heavy = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()
             if fn.api_name in ("segment", "compare", "batch", "single_image", "enhance")}
    assert len(heavy) == 5 and set(heavy.values()) == {("heavy", app.WORKERS)}
    assert demo._queue.max_size == app.QUEUE_SIZE


def test_one_client_cannot_fill_the_queue(app):
    from types import SimpleNamespace

    pushed = []

    async def push(body, request, username):
        pushed.append(body.session_hash)
        return True, "event", "success"

    mine = [SimpleNamespace(session_hash="greedy", request=None) for _ in range(app.MAX_PENDING_PER_CLIENT)]
    queue = SimpleNamespace(push=push, active_jobs=[None],
                            event_queue_per_concurrency_id={"heavy": SimpleNamespace(queue=mine)})
    assert app.limit_per_client(SimpleNamespace(_queue=queue))
    refused = asyncio.run(queue.push(body=SimpleNamespace(session_hash="greedy"), request=None, username=None))
    assert refused[0] is False and refused[2] == "queue_full" and "wait for one to finish" in refused[1]
    assert asyncio.run(queue.push(SimpleNamespace(session_hash="other"), None, None))[0] is True
    assert pushed == ["other"]


def test_cancel_stops_single_image_training_within_a_second(app):
    """Gradio cancels the event's coroutine on Stop; the training thread must stop by itself right after."""
    import cv2

    image = cv2.resize(cv2.imread(str(EXAMPLES[0]))[..., ::-1], (160, 120))
    layer = np.zeros((120, 160, 4), np.uint8)
    cv2.circle(layer, (60, 60), 20, (255, 255, 255, 255), -1)
    editor = {"background": image, "layers": [layer]}
    calls: list[float] = []

    class Progress:
        def __call__(self, fraction, *args, **kwargs):
            calls.append(fraction)

    async def run_and_cancel() -> int:
        task = asyncio.ensure_future(app.single_image_event(editor, None, 600, progress=Progress()))
        while len(calls) < 3:  # training has started
            await asyncio.sleep(0.05)
        task.cancel()
        at_cancel = len(calls)
        with pytest.raises(asyncio.CancelledError):
            await task
        return at_cancel

    threads = threading.active_count()
    at_cancel = asyncio.run(run_and_cancel())
    time.sleep(1.0)
    cpu = time.process_time()
    time.sleep(1.5)
    assert time.process_time() - cpu < 0.3, "training kept running after cancel"
    # Progress is reported every 12 steps of 600; the thread stops within one step of the flag, so it reports at
    # most once more, and never reaches the segmenting stage (0.92).
    assert len(calls) <= at_cancel + 1 and max(calls) < 0.92, calls
    assert threading.active_count() <= threads + 1
    assert not list(app.OUTPUT_DIR.glob("*/mask.png")) if app.OUTPUT_DIR.exists() else True  # nothing written


def test_cancel_callable_stops_the_loop_itself(example_image):
    from medseg_core.single_image import SingleImageConfig, TrainingCancelled, segment_single_image

    roi = np.zeros(example_image.shape[:2], bool)
    roi[100:200, 100:200] = True
    asked, answers = [], iter([False, False, False, True])

    def cancel() -> bool:
        asked.append(1)
        return next(answers)

    reports: list[float] = []
    with pytest.raises(TrainingCancelled, match="cancelled at step 3 of 600"):
        segment_single_image(example_image, roi, SingleImageConfig(steps=600), show_progress=False, cancel=cancel,
                             progress=lambda fraction, **kw: reports.append(fraction))
    # Asked once before each of the three steps it trained and once more, then stopped: no fourth step, and nothing
    # after training (segmenting the image reports 0.92).
    assert len(asked) == 4 and max(reports) < 0.92, reports


def test_the_editor_component_refuses_a_large_image_before_decoding_it(app, tmp_path):
    import gradio as gr
    from gradio.data_classes import FileData

    big = tmp_path / "background.png"
    big.write_bytes(_png_header_only(7500, 6000))
    editor = app.checked_image_editor(type="numpy", image_mode="RGBA")
    assert type(editor) is gr.ImageEditor, "a subclass is a custom component: the browser would get no editor"
    payload = editor.data_model(background=FileData(path=str(big), orig_name="x.png"), layers=[], composite=None)
    with pytest.raises(gr.Error, match="The image is 7500x6000 pixels .45 MP.; the limit is 16 MP"):
        editor.preprocess(payload)  # what Gradio calls with an upload, before the event's handler
    with pytest.raises(gr.Error, match="The image is 7500x6000 pixels .45 MP.; the limit is 16 MP"):
        editor.convert_and_format_image(big.read_bytes())  # a canvas layer comes as bytes
    small = tmp_path / "small.png"
    small.write_bytes(_png(np.zeros((40, 60, 3), np.uint8)))
    value = editor.preprocess(editor.data_model(background=FileData(path=str(small), orig_name="s.jpg"), layers=[],
                                                composite=None))
    assert value["background"].shape == (40, 60, 4)
