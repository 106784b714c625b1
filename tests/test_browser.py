"""End to end in a real browser: Debian's Chromium driven by Playwright against the app on localhost."""

import os
import shutil
import socket
from pathlib import Path

import pytest
from bad_inputs import build_corpus
from conftest import EXAMPLES, ROOT

import medseg_core.hub

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    weights = tmp_path_factory.mktemp("browser-weights")
    shutil.copytree(tiny_weights, weights / "tiny_unet.test")
    real = ROOT / "weights" / "unet_lite2.polyp"
    if (real / "model.safetensors").is_file():  # the screenshot shows the shipped model when there is one
        shutil.copytree(real, weights / real.name)
    mp = pytest.MonkeyPatch()
    mp.setattr(medseg_core.hub, "WEIGHTS_DIR", weights)
    from medseg_core import webapp as app

    app.get_segmenter.cache_clear()
    demo = app.build_demo()
    demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=_free_port(),
                                                   prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()
    mp.undo()


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        yield page
        browser.close()


def test_upload_segment_and_see_the_result(page, server, tmp_path):
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#segment-upload input[type=file]").set_input_files(str(EXAMPLES[1]))
    page.locator("#segment-button").click()
    page.get_by_text("Lesion area").wait_for(timeout=60_000)
    assert page.locator("#segment-slider img").count() >= 1
    report = page.locator("#segment-report")
    report.get_by_text("lesion_percent").wait_for(timeout=10_000)
    # The README picture is refreshed on request: MEDSEG_SCREENSHOT=docs/app_segment.png pytest tests/test_browser.py
    shot = Path(os.environ.get("MEDSEG_SCREENSHOT") or tmp_path / "app_segment.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_bad_file_shows_a_message(page, server, tmp_path):
    corpus = build_corpus(tmp_path, huge=False)
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#segment-upload input[type=file]").set_input_files(str(corpus["text_renamed.png"][0]))
    page.locator("#segment-button").click()
    page.get_by_text("is not an image file we can read").first.wait_for(timeout=30_000)
    # The server keeps serving: a good image right after works.
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#segment-upload input[type=file]").set_input_files(str(EXAMPLES[0]))
    page.locator("#segment-button").click()
    page.get_by_text("Lesion area").wait_for(timeout=60_000)


def test_a_video_clip_is_segmented_and_plays_in_the_browser(page, server, tmp_path, data_root):
    """The Video tab returns an H.264 MP4 that Chromium decodes (readyState and a frame size), with the plot."""
    from medseg_core.io import read_image
    from medseg_core.video import encode_video

    frames = [read_image(data_root / "cvc-clinicdb" / "images" / f"{i}.png") for i in range(1, 13)]
    clip = encode_video(frames, tmp_path / "clinicdb_1-12.mp4", fps=10)
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-upload input[type=file]").set_input_files(str(clip))
    if not (ROOT / "weights" / "unet_lite2.polyp" / "model.safetensors").is_file():  # else the shipped default
        page.locator("#video-model input").fill("tiny_unet.test")
        page.locator("#video-model input").press("Enter")
    page.locator("#video-button").click()
    page.get_by_text("frames per second").wait_for(timeout=120_000)
    video = page.locator("#video-output video")
    video.wait_for(timeout=30_000)
    page.wait_for_function("() => { const v = document.querySelector('#video-output video');"
                           " return v && v.readyState >= 2 && v.videoWidth > 0; }", timeout=30_000)
    assert page.evaluate("() => document.querySelector('#video-output video').videoWidth") == 384
    shot = Path(os.environ.get("MEDSEG_SCREENSHOT_VIDEO") or tmp_path / "app_video.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
