"""End to end in a real browser: Debian's Chromium driven by Playwright against the app on localhost.

Every tab's main action, as a user does it: Segment (an example), Compare (two models), Batch (a zip), Single image
(an image painted with the mouse, trained a few steps), Video (the clip plays), Enhance. Every page load must be
clean: no console error and no failed request. One app server for the module; a fresh page per test."""

import os
import re
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import build_corpus
from conftest import EXAMPLES, ROOT

import medseg_core.hub

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REAL = ROOT / "weights" / "unet_lite2.polyp"
HAS_REAL = (REAL / "model.safetensors").is_file()
#: Screenshots go here (MEDSEG_SCREENSHOT_DIR=docs refreshes the README's pictures); else into the test's tmp folder.
SHOTS = os.environ.get("MEDSEG_SCREENSHOT_DIR")
TABS = ("Segment", "Compare", "Batch", "Single image", "Video", "Enhance")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    weights = tmp_path_factory.mktemp("browser-weights")
    shutil.copytree(tiny_weights, weights / "tiny_unet.test")
    shutil.copytree(tiny_weights, weights / "tiny_unet.other")  # Compare opens with two models: among these
    if HAS_REAL:  # the screenshots show the shipped default model when there is one
        shutil.copytree(REAL, weights / REAL.name)
    mp = pytest.MonkeyPatch()
    mp.setattr(medseg_core.hub, "WEIGHTS_DIR", weights)
    from medseg_core import webapp as app

    # The Single image tab's slider starts at 50 steps; a few are enough to show the tab works.
    mp.setattr(app, "SINGLE_IMAGE_STEPS", (2, 600, 2))
    app.get_segmenter.cache_clear()
    demo = app.build_demo()
    demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=_free_port(),
                                                   prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()
    mp.undo()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server):
    """A fresh page on the app, loaded without a console error or a failed request."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(server, wait_until="networkidle")
    assert not problems, f"loading the page: {problems}"
    yield page
    page.close()


def _shot(page, tmp_path, name: str) -> Path:
    path = Path(SHOTS) / name if SHOTS else tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_the_page_has_every_tab_and_the_image_editor(page):
    for name in TABS:
        assert page.get_by_role("tab", name=name).count() == 1, name
    _tab(page, "Single image")
    editor = page.locator("#single-editor")
    editor.wait_for(timeout=10_000)
    assert editor.locator("input[type=file]").count() == 1, "the editor has no upload"
    editor.get_by_role("button", name="Brush").wait_for(timeout=30_000)  # the toolbar renders after the editor


def _result_or_error(page, result) -> None:
    """Wait for ``result`` (a locator) or an error message; fail with the message."""
    result.or_(page.locator(".toast-body")).first.wait_for(timeout=300_000)
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").first.inner_text()


def test_segment_an_example(page, tmp_path):
    page.get_by_text(EXAMPLES[1].name).filter(visible=True).first.click()
    # The example is in once the upload box shows its file (and its preview has loaded).
    page.locator("#segment-upload").get_by_text(EXAMPLES[1].stem).wait_for(timeout=30_000)
    page.wait_for_load_state("networkidle")
    page.locator("#segment-button").click()
    _result_or_error(page, page.locator("#segment-report").get_by_text("lesion_percent"))
    assert page.locator("#segment-slider img").count() >= 1
    _shot(page, tmp_path, "app_segment.png")


def test_upload_segment_and_see_the_result(page):
    page.locator("#segment-upload input[type=file]").set_input_files(str(EXAMPLES[1]))
    page.locator("#segment-button").click()
    page.locator("#segment-report").get_by_text("lesion_percent").wait_for(timeout=120_000)
    assert page.locator("#segment-slider img").count() >= 1


def test_bad_file_shows_a_message(page, tmp_path, server):
    corpus = build_corpus(tmp_path, huge=False)
    page.locator("#segment-upload input[type=file]").set_input_files(str(corpus["text_renamed.png"][0]))
    page.locator("#segment-button").click()
    page.get_by_text("is not an image file we can read").first.wait_for(timeout=30_000)
    # The server keeps serving: a good image right after works.
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#segment-upload input[type=file]").set_input_files(str(EXAMPLES[0]))
    page.locator("#segment-button").click()
    page.locator("#segment-report").get_by_text("lesion_percent").wait_for(timeout=120_000)


def test_compare_two_models(page):
    _tab(page, "Compare")
    page.locator("#compare-upload input[type=file]").set_input_files(str(EXAMPLES[0]))
    page.locator("#compare-button").click()
    gallery = page.locator("#compare-gallery")
    page.wait_for_function("() => document.querySelectorAll('#compare-gallery img').length >= 2", timeout=120_000)
    table = page.locator("#compare-table").inner_text()
    models = [row.split("\t")[0].strip() for row in table.strip().splitlines()[1:]]  # one row per model
    # Compare opens with the default model and one meant for the same images (webapp.compare_defaults).
    assert len(set(models)) == 2 and set(models) <= {"tiny_unet.other", "tiny_unet.test", REAL.name}, table
    assert gallery.locator("img").count() >= 2


def test_batch_a_zip(page, tmp_path):
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in EXAMPLES[:2]:
            z.write(p, f"frames/{p.name}")
    _tab(page, "Batch")
    page.locator("#batch-upload input[type=file]").set_input_files(str(archive))
    if not HAS_REAL:
        page.locator("#batch-model input").fill("tiny_unet.test")
        page.locator("#batch-model input").press("Enter")
    page.locator("#batch-button").click()
    page.locator("#batch-status").get_by_text(re.compile(r"2 of 2 images")).wait_for(timeout=180_000)
    href = page.locator("#batch-archive a").first.get_attribute("href")
    assert href.endswith("medseg_masks.zip"), href
    rows = page.get_by_role("row").filter(has_text=EXAMPLES[0].name)
    assert rows.count() >= 1


def test_single_image_paint_train_and_get_a_mask(page, tmp_path):
    _tab(page, "Single image")
    editor = page.locator("#single-editor")
    editor.locator("input[type=file]").set_input_files(str(EXAMPLES[1]))
    # The image is in (uploaded, drawn on the canvas) when the brush's own controls appear.
    editor.get_by_role("button", name="Brush Size").wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle")
    canvas = editor.locator("canvas").first
    box = canvas.bounding_box()  # the brush is the tool once an image is in
    # A filled patch over the middle of the frame, painted as a user would: mouse down, zig-zag, mouse up.
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.4 * w, y + 0.45 * h)
    page.mouse.down()
    for k in range(10):
        page.mouse.move(x + (0.4 + 0.2 * (k % 2)) * w, y + (0.45 + 0.02 * k) * h, steps=6)
    page.mouse.up()
    page.wait_for_load_state("networkidle")
    steps = page.locator("#single-steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#single-button").click()
    summary = page.locator("#single-summary")
    _result_or_error(page, summary.get_by_text("Lesion area"))
    text = summary.inner_text()
    assert "trained 2 steps" in text, text
    page.locator("#single-result img").wait_for(timeout=10_000)
    # The mask to download: the image's full size, 0 or 255, its lesion share the one the page states.
    import cv2

    from medseg_core.io import read_image

    href = page.locator("a[href$='/mask.png']").first.get_attribute("href")
    data = np.frombuffer(page.request.get(href).body(), np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert mask.shape == read_image(EXAMPLES[1]).shape[:2] and set(np.unique(mask)) <= {0, 255}
    area = float(re.search(r"([\d.]+) % of the image", text).group(1))
    assert area == pytest.approx(100 * (mask > 0).mean(), abs=0.01), text
    shot = _shot(page, tmp_path, "app_single_image.png")
    print(f"single image screenshot: {shot}")


def _clip(path: Path) -> Path:
    """A short 384x288 clip from an example image, panning a few pixels a frame."""
    import cv2

    from medseg_core.io import read_image
    from medseg_core.video import encode_video

    image = cv2.resize(read_image(EXAMPLES[0]), (400, 300))
    frames = [np.ascontiguousarray(image[6 - k // 2:294 - k // 2, k:384 + k]) for k in range(0, 12, 1)]
    return encode_video(frames, path, fps=10)


def test_a_video_clip_is_segmented_and_plays_in_the_browser(page, tmp_path):
    """The Video tab returns an H.264 MP4 that Chromium decodes (readyState and a frame size), with the plot."""
    clip = _clip(tmp_path / "example_pan.mp4")
    _tab(page, "Video")
    page.locator("#video-upload input[type=file]").set_input_files(str(clip))
    if not HAS_REAL:  # else the shipped default
        page.locator("#video-model input").fill("tiny_unet.test")
        page.locator("#video-model input").press("Enter")
    page.locator("#video-button").click()
    page.locator("#video-output video").wait_for(timeout=180_000)
    page.wait_for_function("() => { const v = document.querySelector('#video-output video');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=60_000)
    assert page.evaluate("() => document.querySelector('#video-output video').videoWidth") == 384
    _shot(page, tmp_path, "app_video.png")


def test_enhance_shows_the_three_views(page):
    _tab(page, "Enhance")
    page.locator("#enhance-upload input[type=file]").set_input_files(str(EXAMPLES[2]))
    page.locator("#enhance-button").click()
    page.wait_for_function("() => document.querySelectorAll('#enhance-gallery img').length >= 4", timeout=60_000)
    captions = page.locator("#enhance-gallery").inner_text().lower()
    for view in ("texture", "detail", "colo"):
        assert view in captions, captions

