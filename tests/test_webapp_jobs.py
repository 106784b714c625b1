"""Long jobs of the launched app (video, batch): a cancel stops the work, frees its threads and its files; and the
caps on what one request may send (batch file count, editor layers, upload bytes, pending requests per address)."""

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, ROOT

import medseg_core.hub

av = pytest.importorskip("av")


@pytest.fixture()
def app(monkeypatch, tiny_weights, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copytree(tiny_weights, weights / "tiny_unet.test")
    monkeypatch.setattr(medseg_core.hub, "WEIGHTS_DIR", weights)
    from medseg_core import webapp

    monkeypatch.setattr(webapp, "OUTPUT_DIR", tmp_path / "outputs")
    webapp.get_segmenter.cache_clear()
    return webapp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(app):
    """The app launched with its own queue and upload settings, and a gradio_client on it."""
    from gradio_client import Client

    demo = app.configure_queue(app.build_demo())
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    try:
        yield demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def _long_clip(path: Path, frames: int = 3000) -> Path:
    """A clip of small frames, long enough that segmenting it takes far longer than the test."""
    image = cv2.resize(cv2.imread(str(EXAMPLES[0]))[..., ::-1], (64, 48))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(image, i % 64, axis=1).copy(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _many_images_zip(path: Path, count: int = 600) -> Path:
    ok, png = cv2.imencode(".png", cv2.resize(cv2.imread(str(EXAMPLES[0])), (96, 72)))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(count):
            z.writestr(f"img_{i:04d}.png", png.tobytes())
    return path


def _started(job, timeout: float = 120.0) -> None:
    """Wait until the job reports progress (its work is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if status.progress_data and any((p.index or 0) >= 2 for p in status.progress_data):
            return
        if job.done():
            raise AssertionError(f"the job ended before it was cancelled: {job.exception()!r}")
        time.sleep(0.05)
    raise AssertionError("the job never reported progress")


def _threads() -> tuple[int, int]:
    """This process's Python threads and its native ones (FFmpeg's, x264's, PyTorch's and OpenMP's included)."""
    import psutil

    return threading.active_count(), psutil.Process().num_threads()


def _threads_back_to(baseline: tuple[int, int], timeout: float = 10.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while any(now > then for now, then in zip(_threads(), baseline)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _threads()


def _cancel(demo, client, job, endpoint: str, raw: bool) -> None:
    """Cancel a running job: the client's own way (the tab's Stop event), or Gradio's raw ``/cancel`` request (what
    the page sends), which needs no Stop button."""
    if not raw:
        assert job.cancel()
        return
    import httpx

    fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == endpoint)
    reply = httpx.post(demo.local_url.rstrip("/") + "/gradio_api/cancel", timeout=120, json={
        "session_hash": client.session_hash, "fn_index": fn_index, "event_id": job.communicator.event_id})
    assert reply.status_code == 200, reply.text


def _cpu_after_cancel(cancel) -> float:
    """CPU seconds this process (the server) spends in the two seconds after the cancel has been answered."""
    cancel()
    time.sleep(0.5)
    cpu = time.process_time()
    time.sleep(2.0)
    return time.process_time() - cpu


@pytest.mark.parametrize("endpoint", ["video", "batch"])
def test_a_cancelled_job_stops_frees_its_threads_and_its_files(app, served, tmp_path, endpoint):
    from gradio_client import handle_file

    demo, client = served
    if endpoint == "video":
        args = (handle_file(str(_long_clip(tmp_path / "long.mp4"))), "tiny_unet.test", 0.0, False)
    else:
        args = (handle_file(str(_many_images_zip(tmp_path / "many.zip"))), "tiny_unet.test", False, False)
    # One short job first, so that the threads kept for reuse (Gradio's, the job thread and its PyTorch pool)
    # exist before the baseline is taken.
    client.predict(handle_file(str(EXAMPLES[0])), "tiny_unet.test", False, False, api_name="/batch")
    baseline = _threads()
    before = set(app.OUTPUT_DIR.iterdir())
    for cycle in range(2):
        job = client.submit(*args, api_name=f"/{endpoint}")
        _started(job)
        cpu = _cpu_after_cancel(functools.partial(_cancel, demo, client, job, endpoint, raw=cycle == 0))
        assert cpu < 0.4, f"cycle {cycle}: the server spent {cpu:.2f} CPU s in the 2 s after the cancel"
        after = _threads_back_to(baseline)
        assert after[0] <= baseline[0] and after[1] <= baseline[1], (baseline, after, threading.enumerate())
    # The cancelled jobs' request folders are gone (removed once their work had stopped); no job holds one.
    assert set(app.OUTPUT_DIR.iterdir()) == before
    assert not app._BUSY_FOLDERS
    # The worker pool is free again: the next request runs.
    out = client.predict(handle_file(str(EXAMPLES[0])), "tiny_unet.test", False, False, api_name="/batch")
    assert out[3] == "1 of 1 images segmented."


def test_a_job_whose_client_went_away_stops_by_itself(app, monkeypatch, tmp_path):
    """No cancel, but the queue marks the client gone: the work stops at its next frame and says so."""
    gone = threading.Event()
    monkeypatch.setattr(app, "_client_gone", lambda session: gone.is_set())
    reports: list[int] = []

    def progress(value, *args, **kwargs):
        reports.append(1)
        if len(reports) == 3:
            gone.set()

    clip = _long_clip(tmp_path / "long.mp4", frames=600)
    import gradio as gr

    with pytest.raises(gr.Error, match="The video was stopped"):
        asyncio.run(app.video_event(str(clip), "tiny_unet.test", 0.0, progress=progress,
                                    request=SimpleNamespace(session_hash="s")))
    assert len(reports) <= 4 and not app._BUSY_FOLDERS
    assert not list(app.OUTPUT_DIR.glob("*/*.mp4"))


def test_batch_refuses_a_plain_list_over_the_file_cap(app, monkeypatch, tmp_path):
    import gradio as gr

    def never(*args, **kwargs):
        raise AssertionError("a batch over the cap was segmented")

    monkeypatch.setattr(app, "segment_files", never)
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(gr.Error, match="The batch holds 1100 files; the limit is 1000 images"):
        app.batch([str(image)] * 1100, "tiny_unet.test", False, False)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(1001):
        os.link(image, folder / f"{i}.png")
    with pytest.raises(gr.Error, match="The batch holds 1001 files; the limit is 1000 images"):
        app.batch([str(folder)], "tiny_unet.test", False, False)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with no real pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_an_editor_layer_flood_is_refused_before_any_layer_is_decoded(app, tmp_path, monkeypatch):
    """40 layers of 16 MP: refused by count, before Gradio decodes one (each would be a 64 MB array)."""
    import gradio as gr
    import PIL.Image
    from gradio.data_classes import FileData

    background = tmp_path / "background.png"
    background.write_bytes(_png_header_only(4000, 4000))
    layer = tmp_path / "layer.png"
    layer.write_bytes(_png_header_only(4000, 4000))
    editor = app.checked_image_editor(type="numpy", image_mode="RGBA")
    opened: list[str] = []
    real_open = PIL.Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    payload = editor.data_model(background=FileData(path=str(background), orig_name="b.png"),
                                layers=[FileData(path=str(layer), orig_name="l.png")] * 40, composite=None)
    with pytest.raises(gr.Error, match="The editor sent 40 layers; the limit is 4"):
        editor.preprocess(payload)
    assert opened == []  # not one image opened, not even its header
    # API callers handing arrays to the handler get the same cap.
    small = np.zeros((8, 8, 4), np.uint8)
    with pytest.raises(gr.Error, match="The editor sent 40 layers; the limit is 4"):
        app.single_image({"background": small[..., :3], "layers": [small] * 40}, None, 5)
    # A layer of another size than the image is refused from the headers too.
    other = tmp_path / "other.png"
    other.write_bytes(_png_header_only(64, 64))
    payload = editor.data_model(background=FileData(path=str(background), orig_name="b.png"),
                                layers=[FileData(path=str(other), orig_name="l.png")], composite=None)
    with pytest.raises(gr.Error, match="A painted layer is 64x64 pixels but the image is 4000x4000"):
        editor.preprocess(payload)


def test_a_truncated_jpeg_in_the_editor_is_one_clear_line(app, tmp_path):
    import gradio as gr
    from gradio.data_classes import FileData

    data = EXAMPLES[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    editor = app.checked_image_editor(type="numpy", image_mode="RGBA")
    payload = editor.data_model(background=FileData(path=str(cut), orig_name="cut.jpg"), layers=[], composite=None)
    with pytest.raises(gr.Error, match="The image could not be read: the file is damaged or truncated") as err:
        editor.preprocess(payload)
    assert str(tmp_path) not in str(err.value)


def test_one_upload_request_is_capped_in_bytes(app, monkeypatch):
    """Gradio caps each file; one request of many files is capped in all (413, before the body is read)."""
    import httpx

    monkeypatch.setattr(app, "MAX_UPLOAD_REQUEST_BYTES", 1_000_000)
    from gradio_client import Client  # noqa: F401 - the app's own launch settings, as `launch` gives them

    demo = app.configure_queue(app.build_demo())
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    try:
        url = demo.local_url.rstrip("/") + "/gradio_api/upload"
        files = [("files", (f"f{i}.png", os.urandom(600_000), "image/png")) for i in range(3)]
        big = httpx.post(url, files=files, timeout=60)
        small = httpx.post(url, files=files[:1], timeout=60)
    finally:
        demo.close()
    assert big.status_code == 413 and "at most 1 MB" in big.text
    assert small.status_code == 200


def test_one_address_cannot_fill_the_queue_with_fresh_sessions(app):
    assert app.MAX_PENDING_PER_ADDRESS >= 1  # on by default

    async def push(body, request, username):
        return True, "event", "success"

    host = SimpleNamespace(client=SimpleNamespace(host="10.0.0.9"))
    mine = [SimpleNamespace(session_hash=f"fresh{i}", request=host) for i in range(app.MAX_PENDING_PER_ADDRESS)]
    queue = SimpleNamespace(push=push, active_jobs=[None],
                            event_queue_per_concurrency_id={"heavy": SimpleNamespace(queue=mine)})
    assert app.limit_per_client(SimpleNamespace(_queue=queue))
    refused = asyncio.run(queue.push(SimpleNamespace(session_hash="another"), host, None))
    assert refused[0] is False and refused[2] == "queue_full"
    other = SimpleNamespace(client=SimpleNamespace(host="10.0.0.10"))
    assert asyncio.run(queue.push(SimpleNamespace(session_hash="x"), other, None))[0] is True


def test_load_bench_refuses_zero_requests_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--requests", "0"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["load.py: error: --requests must be at least 1, got 0"]


def test_a_running_jobs_folder_outlives_the_age_cleanup_and_goes_when_the_job_fails(app):
    """The cleanup of old request folders never removes one a running job writes to; a failed job's folder is
    removed by the job itself, once its work has ended."""
    started, release = threading.Event(), threading.Event()
    seen: dict[str, Path] = {}

    def work(job):
        seen["folder"] = app._request_dir(job)
        old = time.time() - app.KEEP_OUTPUTS_S - 60
        os.utime(seen["folder"], (old, old))  # as if the job had run for longer than the outputs are kept
        started.set()
        release.wait(30)
        (seen["folder"] / "late.txt").write_text("still writing")
        raise RuntimeError("the job failed")

    async def run() -> None:
        task = asyncio.ensure_future(app.run_job(work, what="test"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        app._request_dir()  # another request's cleanup runs while the job writes
        assert seen["folder"].is_dir()
        release.set()
        with pytest.raises(RuntimeError, match="the job failed"):
            await task

    asyncio.run(run())
    assert not seen["folder"].exists() and not app._BUSY_FOLDERS
