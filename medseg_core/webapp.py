"""The web app's wiring (Gradio): one handler per action, one small builder per tab; the work is done elsewhere.

    medseg-app                             # http://127.0.0.1:7860, shipped weights from weights/
    python app.py                          # the same (the Hugging Face Space entry point)
    MEDSEG_HUB_MODELS=owner/repo@rev medseg-app   # also offer these models from the Hugging Face Hub (pinned)
    MEDSEG_ALLOW_ANY_HUB_MODEL=1 medseg-app      # also accept any Hub repo id typed into the model box

Security and limits: only listed models load (the trust boundary is :func:`_segmenter_or_error`; configs are
validated by :mod:`medseg_core.safety`), every image's size is checked from its header before it is decoded, zips
are unpacked by streaming under caps, outputs are private (0700/0600) and short-lived, and all heavy events share
one worker pool of :data:`WORKERS` (the cores) behind one queue with a per-client limit (:func:`configure_queue`).

Handlers only call ``medseg_core`` (Segmenter, batch, single-image training, TDC-Enhance, presentation helpers in
:mod:`medseg_core.visualize`) and turn failures into ``gr.Error`` messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pydantic
from gradio.data_classes import FileData, ListFiles

from . import hub
from .batch import (
    MAX_ZIP_FILES,
    BatchCancelled,
    default_model_name,
    expand_inputs,
    segment_files,
    write_results_zip,
)
from .evaluation import scores_against_mask_image
from .hub import UnsafeWeightsError, WeightsNotFoundError, list_local_weights
from .inference import MAX_IMAGE_PIXELS, ImageInputError, Segmenter, SegResult, load_image_file
from .io import IMAGE_EXTENSIONS, IMAGE_FORMAT_NAMES, to_rgb_uint8, write_mask
from .labels import LabelSchema
from .postprocess import PostprocessSpec
from .safety import (
    ExtractionBudget,
    check_image_size,
    downscale_for_display,
    image_size_from_header,
    make_private,
    private_dir,
)
from .single_image import SingleImageConfig, TrainingCancelled, read_roi, segment_single_image, write_result
from .video import (
    MAX_FPS,
    MAX_FRAME_PIXELS,
    MAX_FRAMES,
    MAX_SECONDS,
    MAX_SIDE,
    VideoCancelled,
    VideoInputError,
    events_markdown,
    plot_lesion_area,
    segment_video,
)
from .visualize import confidence_heatmap, draw_legend, enhance_gallery, summary_markdown

__all__ = ["build_demo", "configure_queue", "launch", "limit_per_client", "main"]

log = logging.getLogger("medseg.app")


class OneOrMoreFiles(ListFiles):
    """A multiple-file input's payload that also takes one file on its own (``/batch`` called with a single file,
    not a one-item list); set as the ``gr.File`` instance's ``data_model``, so that the page's component stays
    Gradio's own."""

    @pydantic.model_validator(mode="before")
    @classmethod
    def _one_file_is_a_list_of_one(cls, value: Any) -> Any:
        return [value] if isinstance(value, (dict, FileData)) else value


class UserError(gr.Error):
    """A handled error (a user's mistake, or a failure whose traceback this module has logged already): the page
    shows the message, and the server log gets it as one line, not Gradio's traceback (``print_exception=False``)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("print_exception", False)
        super().__init__(message, **kwargs)
        log.info("user error: %s", " ".join(str(message).split())[:300])


OUTPUT_DIR = Path(tempfile.gettempdir()) / "medseg-app"
#: Request folders (downloads) live this long; extracted uploads are removed when the request ends.
KEEP_OUTPUTS_S = 600
#: Environment variable that lets users type any Hub repo id into the model box (off by default).
ALLOW_ANY_HUB_ENV = "MEDSEG_ALLOW_ANY_HUB_MODEL"
#: Workers shared by all heavy events: one per core this process may use.
WORKERS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
#: The heavy events' shared concurrency group, the queue's size, and how many events one client may have queued.
HEAVY = "heavy"
QUEUE_SIZE = int(os.environ.get("MEDSEG_QUEUE_SIZE", "64"))
MAX_PENDING_PER_CLIENT = int(os.environ.get("MEDSEG_MAX_PENDING_PER_CLIENT", "4"))
#: Same, per client address (0: off). Fresh session ids from one address cannot fill the queue; behind a proxy that
#: hides the clients' addresses every client shares one, so raise it (or set 0) there.
MAX_PENDING_PER_ADDRESS = int(os.environ.get("MEDSEG_MAX_PENDING_PER_ADDRESS", "8"))
#: Largest image the Single image tab trains on (its outputs are full-resolution float maps).
SINGLE_IMAGE_MAX_PIXELS = 16_000_000
#: Most painted layers the Single image editor takes (the page sends one; each is decoded to a full-size array).
MAX_EDITOR_LAYERS = 4
#: Most files one batch request may hold, as a list of images or unpacked from its zips.
MAX_BATCH_FILES = MAX_ZIP_FILES
#: The Single image tab's training-steps slider: lowest, highest, default (the handler takes 1-600). The browser
#: tests lower the lowest, to train a few steps through the page in seconds.
SINGLE_IMAGE_STEPS = (50, 600, 450)
#: Bytes all running batch requests may have unpacked from zips at once.
SERVER_EXTRACT_BUDGET = ExtractionBudget(int(float(os.environ.get("MEDSEG_MAX_EXTRACT_MB", "4000")) * 1_000_000))
_PATH_IN_TEXT = re.compile(r"(?<![\w.-])(?:/[^\s'\",:;)]+)+")
_DEMOS: weakref.WeakSet = weakref.WeakSet()
#: Every heavy event shares one pool of WORKERS workers.
_HEAVY: dict[str, Any] = {"concurrency_id": HEAVY, "concurrency_limit": WORKERS}
#: Largest file in an upload (Gradio's ``max_file_size``), and most bytes one upload request may carry in all.
MAX_UPLOAD = "50mb"
MAX_UPLOAD_REQUEST_BYTES = int(float(os.environ.get("MEDSEG_MAX_UPLOAD_MB", "200")) * 1_000_000)
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
#: What the image uploads accept: the one list in medseg_core.io (also behind messages and folder/zip expansion).
IMAGE_TYPES = list(IMAGE_EXTENSIONS)


def _examples_dir() -> Path:
    """``MEDSEG_EXAMPLES_DIR``; else ``examples/`` beside the package (a checkout); else in the working folder."""
    if os.environ.get("MEDSEG_EXAMPLES_DIR"):
        return Path(os.environ["MEDSEG_EXAMPLES_DIR"])
    beside = Path(__file__).resolve().parents[1] / "examples"
    return beside if beside.is_dir() else Path("examples")


EXAMPLES = sorted(_examples_dir().glob("*.jpg"))


# ---- handlers ------------------------------------------------------------------------------------------------------


def available_models() -> list[str]:
    """Weights shipped in ``weights/`` plus Hub repo ids listed in ``MEDSEG_HUB_MODELS`` (comma-separated,
    ``owner/name`` or ``owner/name@revision`` to pin a revision). Refused weights folders are not offered
    (:func:`refused_models`)."""
    hub_ids = [m.strip() for m in os.environ.get("MEDSEG_HUB_MODELS", "").split(",") if m.strip()]
    local = list_local_weights()
    return local + [m for m in hub_ids if m not in local]


def refused_models() -> dict[str, str]:
    """The ``weights/`` folders that were refused when read, each with its reason (without server paths); the
    other models are served as usual."""
    return {name: _without_paths(reason) for name, reason in hub.scan_local_weights().refused.items()}


def refused_note(refused: dict[str, str]) -> str:
    """The page's line about refused weights (empty when there are none)."""
    if not refused:
        return ""
    return "**Not offered** (refused when read): " + "; ".join(
        f"`{name}`: {reason.removeprefix(name + ': ')}" for name, reason in refused.items())


def any_hub_model_allowed() -> bool:
    """Whether the operator lets users type any Hub repo id (``MEDSEG_ALLOW_ANY_HUB_MODEL=1``)."""
    return os.environ.get(ALLOW_ANY_HUB_ENV, "").strip().lower() in ("1", "true", "yes")


def default_model(models: list[str], video: bool = False) -> str | None:
    """The model a tab opens with, when offered: ``MEDSEG_DEFAULT_MODEL`` (the most accurate polyp model) for
    images, ``MEDSEG_VIDEO_MODEL`` (the fast one) for video, which falls back to the image default; else the first."""
    wanted = default_model_name(video=True) if video else None
    if wanted not in models:
        wanted = default_model_name()
    return wanted if wanted in models else (models[0] if models else None)


def _weights(name: str) -> hub.Weights:
    """The weights of a model the box may name: a shipped ``weights/`` name (read once, when listed), else a Hub
    repo (never a local path)."""
    local = hub.scan_local_weights()
    if name in local.models:
        return local.models[name]
    return hub.resolve_hub(name)


def model_purpose(name: str | None, fetch: bool = False) -> dict[str, str]:
    """What a model is for, from its ``config.json`` (validated plain text): ``modality``, ``intended_use`` and
    ``task``, those it records. Shipped weights are read here; a Hub repo only with ``fetch`` (once its segmenter is
    loaded, so nothing is downloaded for a label). Empty when unknown."""
    if not name or (name not in list_local_weights() and not fetch):
        return {}
    try:
        return _weights(name).purpose
    except Exception:  # noqa: BLE001 - a label or a note, never a reason to fail
        return {}


def model_choices(models: list[str]) -> list[tuple[str, str]]:
    """The model list as (label, value) pairs: ``"unet_lite2.polyp: Colonoscopy polyps in still images (most
    accurate)"``, the value staying the plain name that every handler receives."""
    out = []
    for name in models:
        use = model_purpose(name).get("intended_use", "").rstrip(".")
        out.append((f"{name}: {use}" if use else name, name))
    return out


def compare_defaults(models: list[str]) -> list[str]:
    """The models Compare opens with: the default model and one other meant for the same images: of the same
    modality and task first, then of the same modality, then one that records no modality; never one made for
    another modality (a gastroscopy model beside a colonoscopy one). The default alone when no other fits."""
    first = default_model(models)
    if first is None:
        return []
    mine = model_purpose(first)
    ranked = []
    for i, name in enumerate(models):
        theirs = model_purpose(name)
        if name == first or (mine.get("modality") and theirs.get("modality")
                             and theirs["modality"] != mine["modality"]):
            continue
        ranked.append((theirs.get("modality") != mine.get("modality"), theirs.get("task") != mine.get("task"), i,
                       name))
    return [first, *[name for *_, name in sorted(ranked)[:1]]]


@functools.lru_cache(maxsize=4)
def get_segmenter(name: str) -> Segmenter:
    """One Segmenter per model name, built on first use (weights resolved locally or from the Hub cache)."""
    weights = _weights(name)
    if not weights.segments_images:
        raise WeightsNotFoundError(f"{name} is a helper model; it segments nothing on its own")
    return Segmenter.from_pretrained(weights, name=name)


def _postprocess(on: bool) -> PostprocessSpec:
    """The post-processing checkbox: the chain recorded with the model's weights, or none."""
    return "recorded" if on else "none"


def _without_paths(text: str) -> str:
    """A message with any absolute path replaced by '…' (the page never shows server paths)."""
    return _PATH_IN_TEXT.sub("…", text)


def _unknown_model(name: str) -> UserError:
    """The one message for every model name that is not offered (unknown, a path, a helper, not allowed)."""
    hint = " or type a Hugging Face Hub repo id (owner/name)" if any_hub_model_allowed() else ""
    return UserError(f"Unknown model {name[:100]!r}: choose one from the list{hint}.")


def _segmenter_or_error(name: str | None) -> Segmenter:
    """The trust boundary for models: listed names, or (when the operator allows it) Hub repo ids; nothing else."""
    if not name:
        raise UserError("No model is available: put a weights folder in weights/ or set MEDSEG_HUB_MODELS.")
    listed = name in available_models()
    refused = refused_models().get(name) if not listed else None
    if refused:
        raise UserError(f"Model {name!r} was refused: {refused}")
    if not listed:
        if not any_hub_model_allowed():
            raise _unknown_model(name)
        try:
            hub.parse_hub_spec(name)
        except ValueError:
            raise _unknown_model(name) from None
    try:
        return get_segmenter(name)
    except WeightsNotFoundError as err:
        log.info("model %r not found: %s", name, err)
        if not listed:
            raise _unknown_model(name) from err
        raise UserError(f"Model {name!r} cannot be loaded: {_without_paths(str(err))}") from err
    except UnsafeWeightsError as err:
        log.warning("model %r refused: %s", name, err)
        raise UserError(f"Model {name!r} was refused: {_without_paths(str(err))}") from err
    except Exception as err:  # noqa: BLE001 - a broken weights folder; the log keeps the traceback
        log.exception("model %r failed to load", name)
        raise UserError(f"Model {name!r} could not be loaded ({type(err).__name__}: "
                       f"{_without_paths(str(err))[:300]})") from err


def _file_path(upload: Any) -> str:
    if upload is None:
        raise UserError("Upload an image first (or pick one of the examples).")
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def _load(upload: Any) -> np.ndarray:
    try:
        return load_image_file(_file_path(upload))
    except ImageInputError as err:
        raise UserError(str(err)) from err


#: Request folders of jobs still running: the age-based cleanup leaves them alone, and each job removes its own
#: folder when it fails or is cancelled, after its work has stopped.
_BUSY_FOLDERS: set[Path] = set()
_BUSY_LOCK = threading.Lock()


def _remove_old_outputs() -> None:
    """Remove request folders older than ``KEEP_OUTPUTS_S``, except those of running jobs."""
    now = time.time()
    with _BUSY_LOCK:
        busy = set(_BUSY_FOLDERS)
    for entry in OUTPUT_DIR.iterdir():
        if entry in busy:
            continue
        with contextlib.suppress(OSError):
            if now - entry.lstat().st_mtime > KEEP_OUTPUTS_S:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()


def _request_dir(job: Job | None = None) -> Path:
    """A fresh private folder (0700) for one request's downloads; folders older than ``KEEP_OUTPUTS_S`` go (never
    one of a running job). With ``job``, the folder is the job's: kept while it runs, removed if it fails."""
    private_dir(OUTPUT_DIR)
    _remove_old_outputs()
    folder = private_dir(OUTPUT_DIR / uuid.uuid4().hex)
    if job is not None:
        job.own(folder)
    return folder


class JobStopped(Exception):
    """A job's work noticed that it is no longer wanted (Stop pressed, or the client went away)."""


#: What the work raises when its ``should_stop`` turns True: each long task has its own.
_STOPPED = (TrainingCancelled, BatchCancelled, VideoCancelled, JobStopped)


class _JobThreads:
    """The threads jobs run on: at most ``size`` (the heavy events' workers: a job holds its worker until its work
    stops, so no more run at once), started when needed and reused from job to job, with the thread pools PyTorch
    and OpenMP keep per calling thread, so submit-and-cancel cycles leave the thread count where it was. Daemon
    threads: stopping the server does not wait for a job."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            if self._idle <= self._work.qsize() and len(self._threads) < self.size:  # no idle thread for it
                thread = threading.Thread(target=self._run, name=f"medseg-job-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._work.put((fn, args))

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fn, args = self._work.get()
            with self._lock:
                self._idle -= 1
            fn(*args)  # never raises: run_job's target hands every exception to its event


_JOB_THREADS = _JobThreads(WORKERS)


class Job:
    """One long task of the app (a batch, a video, a single-image training, and any later one).

    Its work runs on a job thread, handed over by :func:`run_job` from the event's coroutine, so the event keeps
    its worker slot in the shared pool (and counts against its client's limit) until the work has stopped. The work
    asks :meth:`should_stop` between images, frames or training steps: True once Stop is pressed (Gradio cancels
    the coroutine) or the client has gone away. Folders taken with :func:`_request_dir` belong to the job: kept from
    the age-based cleanup while it runs, removed by the job's own thread if it fails or stops."""

    def __init__(self, session: str | None = None) -> None:
        self.session = session
        self.folders: list[Path] = []
        self._stop = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set() or _client_gone(self.session)

    def own(self, folder: Path) -> None:
        with _BUSY_LOCK:
            _BUSY_FOLDERS.add(folder)
        self.folders.append(folder)

    def release(self, failed: bool) -> None:
        """The work has ended: its folders go back to the age-based cleanup, or (failed, stopped) are removed."""
        with _BUSY_LOCK:
            _BUSY_FOLDERS.difference_update(self.folders)
        if failed:
            for folder in self.folders:
                shutil.rmtree(folder, ignore_errors=True)


async def run_job(work: Callable[[Job], Any], request: Any = None, what: str = "job") -> Any:
    """Run ``work(job)`` on a job thread (:data:`_JOB_THREADS`) and return its result (raise its exception).

    When Gradio cancels the event (Stop, or the server closing), the job is told to stop and this coroutine waits
    for the thread to end before it lets the cancellation through: the event's worker slot and its client's count
    are held until the work has stopped, and the job's folders are removed by its thread after that. A job that
    stops by itself because its client went away ends with a one-line message."""
    job = Job(getattr(request, "session_hash", None))
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def target(context: contextvars.Context) -> None:
        result, error = None, None
        try:
            result = context.run(work, job)  # Gradio's progress reads context variables
        except BaseException as err:  # noqa: BLE001 - handed to the event's coroutine
            error = err
        job.release(failed=error is not None)  # before the event hears of it: its files are settled first
        with contextlib.suppress(RuntimeError):  # the event loop has closed (the server stopped)
            loop.call_soon_threadsafe(settle, result, error)

    _JOB_THREADS.submit(target, contextvars.copy_context())
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        job.cancel()
        log.info("%s cancelled by the client; waiting for its work to stop", what)
        await asyncio.wait([done])
        if done.done() and not done.cancelled():
            done.exception()  # retrieved: the cancellation is what the caller sees
        raise
    except _STOPPED as err:
        raise UserError(f"The {what} was stopped.") from err


def _ground_truth_scores(upload: Any, result: SegResult, schema: LabelSchema) -> dict[str, float] | None:
    if upload is None:
        return None
    truth = _load(upload)
    h, w = result.confidence.shape
    if truth.shape[:2] != (h, w):
        raise UserError(f"The ground-truth mask is {truth.shape[1]}x{truth.shape[0]} but the image is {w}x{h}; they "
                       "must be the same size.")
    try:
        return scores_against_mask_image(result.mask, truth, schema)
    except ValueError as err:
        raise UserError(f"The ground-truth mask does not fit this model's classes: {err}") from err


def segment(upload: Any, model_name: str | None, tta: bool, postprocess: bool, truth: Any = None,
            show_views: bool = False):
    """The Segment tab: image file -> before/after, confidence map, summary, mask PNG, JSON report, and (with TTA)
    the disagreement between flip passes, (on request) the TDC-Enhance views."""
    image = _load(upload)
    segmenter = _segmenter_or_error(model_name)
    try:
        result = segmenter(image, tta=tta, postprocess=_postprocess(postprocess))
    except Exception as err:  # noqa: BLE001 - the page shows a message, the log keeps the traceback
        log.exception("segmentation failed")
        raise UserError(f"Segmentation failed: {type(err).__name__}: {err}") from err
    scores = _ground_truth_scores(truth, result, segmenter.schema)
    folder = _request_dir()
    stem = Path(_file_path(upload)).stem[:80] or "image"
    mask_path = write_mask(folder, stem, result.mask, segmenter.schema)["colour" if segmenter.schema.multilabel
                                                                        else "mask"]
    report = {"file": Path(_file_path(upload)).name, **result.stats}
    purpose = model_purpose(model_name, fetch=True)
    report.update({k: purpose[k] for k in ("modality", "intended_use") if k in purpose})
    if scores is not None:
        report["ground_truth"] = scores
    report_path = folder / f"{stem}_report.json"
    report_path.write_text(json.dumps(report, indent=2))
    make_private(folder)
    disagreement = result.disagreement
    # Files keep the full size; what the page shows is shrunk to what a browser can decode.
    shown = downscale_for_display(image)
    return (
        (shown, draw_legend(downscale_for_display(result.overlay), segmenter.schema)),  # the key on the picture
        confidence_heatmap(shown, downscale_for_display(result.confidence)),
        summary_markdown(result.stats, scores, segmenter.schema) + _intended_use_line(purpose),
        str(mask_path),
        report,
        str(report_path),
        confidence_heatmap(shown, downscale_for_display(np.clip(disagreement * 4, 0, 1)))
        if disagreement is not None else None,
        _gallery_for_display(enhance_gallery(shown)) if show_views else None,
    )


def _intended_use_line(purpose: dict[str, str]) -> str:
    """The result's note of what the model is for (a model used on other images than these is out of its domain)."""
    if not purpose.get("intended_use"):
        return ""
    made_for = f"Made for {purpose['modality']} images: o" if purpose.get("modality") else "O"
    return (f"\n\n**Intended use:** {purpose['intended_use']} {made_for}ther kinds of images are outside what the "
            "model was trained and measured on.")


def _gallery_for_display(items: list[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    return [(downscale_for_display(img), label) for img, label in items]


def compare(upload: Any, model_names: list[str] | None, tta: bool, postprocess: bool):
    """The Compare tab: one image through 1-4 models; overlays side by side and a timing table."""
    names = list(dict.fromkeys(model_names or []))
    if not 1 <= len(names) <= 4:
        raise UserError("Choose between one and four models to compare.")
    image = _load(upload)
    gallery, rows = [], ["| model | lesion found (score / threshold) | lesion area % | lesions | mean confidence | "
                         "time (ms) |", "|---|---|---|---|---|---|"]
    for name in names:
        segmenter = _segmenter_or_error(name)
        result = segmenter(image, tta=tta, postprocess=_postprocess(postprocess))
        s = result.stats
        gallery.append((draw_legend(downscale_for_display(result.overlay), segmenter.schema),
                        f"{name} · {s['inference_ms']:.0f} ms"))
        conf = f"{s['mean_confidence']:.3f}" if s["mean_confidence"] is not None else "—"
        threshold = s["presence_threshold"]
        found = (f"{'yes' if s['lesion_present'] else 'no'} ({s['presence_score']:.2f}"
                 + (f" / {threshold:g})" if threshold is not None else ", no rule)"))
        rows.append(f"| `{name}` | {found} | {s['lesion_percent']:.2f} | {s['lesion_count']} | {conf} | "
                    f"{s['inference_ms']:.0f} |")
    return gallery, "\n".join(rows)


def _too_many_files(count: int) -> UserError:
    return UserError(f"The batch holds {count} files; the limit is {MAX_BATCH_FILES} images per batch. Split it and "
                     "try again.")


def batch(uploads: list[Any] | Any | None, model_name: str | None, tta: bool, postprocess: bool,
          progress: gr.Progress = gr.Progress(), job: Job | None = None):
    """The Batch tab: images and/or zip archives -> a zip of masks, overlays and statistics.csv, and the table.
    ``uploads``: a list of files, or one file (the API takes either); at most :data:`MAX_BATCH_FILES` images,
    listed or unpacked. ``job`` (:func:`batch_event`): stops between images when it is cancelled."""
    if uploads is not None and not isinstance(uploads, (list, tuple)):
        uploads = [uploads]
    if not uploads:
        raise UserError("Upload one or more images, or a zip of images.")
    if len(uploads) > MAX_BATCH_FILES:
        raise _too_many_files(len(uploads))
    segmenter = _segmenter_or_error(model_name)
    folder = _request_dir(job)
    # Zips are unpacked under caps per file, per upload and per server, and removed when the request ends.
    with SERVER_EXTRACT_BUDGET.request() as budget:
        try:
            try:
                paths = expand_inputs([_file_path(u) for u in uploads], folder / "inputs", budget=budget)
            except ValueError as err:
                raise UserError(_without_paths(str(err))) from err
            if not paths:
                raise UserError(f"The upload holds no images ({IMAGE_FORMAT_NAMES}).")
            if len(paths) > MAX_BATCH_FILES:
                raise _too_many_files(len(paths))
            rows = segment_files(segmenter, paths, folder / "masks", tta=tta, postprocess=_postprocess(postprocess),
                                 progress=lambda items: progress.tqdm(items, desc="Segmenting"),
                                 should_stop=job.should_stop if job is not None else None)
        finally:
            shutil.rmtree(folder / "inputs", ignore_errors=True)
    archive = write_results_zip(folder / "masks", folder / "medseg_masks.zip")
    make_private(folder)
    table = [[r["file"], r["status"], {1: "yes", 0: "no"}.get(r["lesion_present"], ""), r["presence_score"],
              r["lesion_percent"], r["lesion_count"], r["mean_confidence"], r["inference_ms"], r["error"]]
             for r in rows]
    ok = sum(r["status"] == "ok" for r in rows)
    return str(archive), str(folder / "masks" / "statistics.csv"), table, f"{ok} of {len(rows)} images segmented."


async def batch_event(uploads: list[Any] | Any | None, model_name: str | None, tta: bool, postprocess: bool,
                      progress: gr.Progress = gr.Progress(), request: gr.Request = None):
    """:func:`batch` as a :class:`Job` (the ``/batch`` event): Stop or a disconnect stops it between images."""
    return await run_job(lambda job: batch(uploads, model_name, tta, postprocess, progress, job), request, "batch")


def enhance(upload: Any) -> list[tuple[np.ndarray, str]]:
    """The Enhance tab: the image and its three TDC-Enhance views (texture, detail, colour)."""
    return _gallery_for_display(enhance_gallery(_load(upload)))


def _editor_upload_size(file: Any) -> tuple[int, int] | None:
    """(width, height) of one image the editor hands to the server (a file, or the bytes of a canvas layer), read
    from its header; None for nothing."""
    path = getattr(file, "path", None)
    if path:
        return image_size_from_header(path)
    if isinstance(file, (bytes, bytearray, memoryview)):
        import io

        import PIL.Image

        try:
            with PIL.Image.open(io.BytesIO(bytes(file))) as im:
                return im.size
        except PIL.Image.DecompressionBombError as err:
            raise ValueError("The image is too large to open safely") from err
        except (PIL.UnidentifiedImageError, OSError) as err:
            raise ValueError("The image is not an image file we can read") from err
    return None


def _checked_convert_and_format_image(editor: gr.ImageEditor, file: Any, flatten_on_white: bool = False) -> Any:
    """``gr.ImageEditor.convert_and_format_image`` after checking the image's size from its header; a file that
    fails to decode (truncated, damaged) is one line, not Gradio's generic preprocessing error."""
    try:
        size = _editor_upload_size(file)
        if size is not None:
            check_image_size(*size, SINGLE_IMAGE_MAX_PIXELS, "The image")
    except ValueError as err:
        raise UserError(_without_paths(str(err))) from err
    try:
        return gr.ImageEditor.convert_and_format_image(editor, file, flatten_on_white)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: truncated or damaged data
        raise UserError("The image could not be read: the file is damaged or truncated. Save it again (PNG or "
                        "JPEG) and upload it.") from err


def _editor_layers(editor: gr.ImageEditor, payload: Any) -> list[Any]:
    """The layers an editor payload will decode: its own, or those of the canvas blobs it points to."""
    if payload is None:
        return []
    if getattr(payload, "id", None) is not None:
        cached = editor.blob_storage.get(payload.id)
        return list(getattr(cached, "layers", None) or [])
    return list(getattr(payload, "layers", None) or [])


def _checked_preprocess(editor: gr.ImageEditor, payload: Any) -> Any:
    """``gr.ImageEditor.preprocess`` after counting the layers: at most :data:`MAX_EDITOR_LAYERS`, refused before
    any is decoded (each would be a full-size array); each is then checked from its header as it is decoded."""
    layers = _editor_layers(editor, payload)
    if len(layers) > MAX_EDITOR_LAYERS:
        raise UserError(f"The editor sent {len(layers)} layers; the limit is {MAX_EDITOR_LAYERS}. Paint the region "
                        "of interest on one layer.")
    background = getattr(payload, "background", None) if getattr(payload, "id", None) is None else \
        getattr(editor.blob_storage.get(payload.id), "background", None)
    try:
        base = _editor_upload_size(background)
        sizes = [_editor_upload_size(layer) for layer in layers]
    except ValueError as err:
        raise UserError(_without_paths(str(err))) from err
    for size in sizes:
        if base is not None and size is not None and size != base:
            raise UserError(f"A painted layer is {size[0]}x{size[1]} pixels but the image is {base[0]}x{base[1]}; "
                            "each layer must be the image's size.")
    return gr.ImageEditor.preprocess(editor, payload)


def checked_image_editor(**kwargs: Any) -> gr.ImageEditor:
    """A ``gr.ImageEditor`` that refuses more than :data:`MAX_EDITOR_LAYERS` layers, reads each uploaded image's
    (and layer's) size from its header and refuses one above :data:`SINGLE_IMAGE_MAX_PIXELS` before Gradio decodes
    it (Gradio decodes the editor's images itself, in ``preprocess``, whatever ``type`` says).

    The check wraps this one instance's ``convert_and_format_image``, which ``preprocess`` calls for the background
    and every layer. A subclass would do the same, but Gradio takes any subclass defined outside its package for a
    custom component and the page asks for JavaScript that does not exist: no editor in the browser."""
    editor = gr.ImageEditor(**kwargs)
    editor.convert_and_format_image = types.MethodType(_checked_convert_and_format_image, editor)
    editor.preprocess = types.MethodType(_checked_preprocess, editor)
    return editor


def _editor_image(value: Any, what: str) -> np.ndarray:
    """One image of a gr.ImageEditor value (a file path, or an array from API callers), size-checked first."""
    if isinstance(value, (str, os.PathLike)) or hasattr(value, "path"):
        path = os.fspath(getattr(value, "path", value))
        try:
            check_image_size(*image_size_from_header(path), SINGLE_IMAGE_MAX_PIXELS, what)
        except ValueError as err:
            raise UserError(_without_paths(str(err))) from err
        import PIL.Image

        with PIL.Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGBA"))
    array = np.asarray(value)
    if array.ndim >= 2:
        try:
            check_image_size(array.shape[1], array.shape[0], SINGLE_IMAGE_MAX_PIXELS, what)
        except ValueError as err:
            raise UserError(str(err)) from err
    return array


def _roi_from_editor(editor: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The background image and the painted ROI (any non-transparent pixel of any layer) of a gr.ImageEditor value.

    Each image's size is checked (from the file header when the editor hands over files) before it is decoded."""
    if not editor or editor.get("background") is None:
        raise UserError("Upload an image into the editor first, then paint the region of interest on it.")
    try:
        image = to_rgb_uint8(_editor_image(editor["background"], "The image"))
    except ValueError as err:
        raise UserError(f"The image cannot be used: {err}") from err
    h, w = image.shape[:2]
    roi = np.zeros((h, w), bool)
    if len(editor.get("layers") or []) > MAX_EDITOR_LAYERS:
        raise UserError(f"The editor sent {len(editor['layers'])} layers; the limit is {MAX_EDITOR_LAYERS}. Paint "
                        "the region of interest on one layer.")
    for layer in editor.get("layers") or []:
        layer = _editor_image(layer, "A painted layer")
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == (h, w):
            roi |= layer[..., 3] > 0
    return image, roi


def single_image(editor: dict[str, Any] | None, roi_file: Any, steps: int,
                 progress: gr.Progress = gr.Progress(), cancel: Any = None, job: Job | None = None):
    """The Single image tab: train a small network on one image from a painted (or uploaded) ROI and segment it.

    ``cancel`` (a callable) is asked before every training step; the app's event passes its job's
    :meth:`Job.should_stop`, which turns True when the user presses Stop or disconnects (:func:`single_image_event`)."""
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        raise UserError("Training steps must be a whole number from 1 to 600.") from None
    if not 1 <= steps <= 600:
        raise UserError("Training steps must be a whole number from 1 to 600.")
    image, roi = _roi_from_editor(editor)
    if roi_file is not None:
        try:
            roi = read_roi(_file_path(roi_file), image.shape[:2], max_pixels=SINGLE_IMAGE_MAX_PIXELS)
        except ValueError as err:
            raise UserError(_without_paths(str(err))) from err
    if not roi.any():
        raise UserError("Paint the region of interest on the image with the brush (or upload a ROI file).")
    if roi.all():
        raise UserError("The ROI covers the whole image: leave some normal tissue unpainted.")
    config = SingleImageConfig(steps=steps)
    try:
        result = segment_single_image(image, roi, config, progress=progress, show_progress=False, cancel=cancel)
    except ValueError as err:
        raise UserError(str(err)) from err
    folder = _request_dir(job)
    files = write_result(result, folder)
    make_private(folder)
    area = 100.0 * float(result.mask.mean())
    note = ("The ROI's corners are painted, so it was read as **normal tissue**: the result is its complement.  \n"
            if result.complement else "")
    summary = (f"{note}**Lesion area:** {area:.2f} % of the image · trained {config.steps} steps in "
               f"{result.seconds:.1f} s on the {config.device.upper()}")
    return downscale_for_display(result.overlay), summary, *[str(f) for f in files.values()]


def _client_gone(session_hash: str | None) -> bool:
    """Whether the queue has marked this client's running event dead (the page closed or the stream dropped)."""
    if not session_hash:
        return False
    for demo in list(_DEMOS):
        for jobs in getattr(getattr(demo, "_queue", None), "active_jobs", None) or []:
            for event in jobs or []:
                if getattr(event, "session_hash", None) == session_hash and (
                        not getattr(event, "alive", True) or getattr(event, "closed", False)):
                    return True
    return False


async def single_image_event(editor: dict[str, Any] | None, roi_file: Any, steps: int,
                             progress: gr.Progress = gr.Progress(), request: gr.Request = None):
    """:func:`single_image` as a :class:`Job` (the ``/single_image`` event): Stop or a disconnect stops it within a
    training step, and nothing is written."""
    return await run_job(lambda job: single_image(editor, roi_file, steps, progress, job.should_stop, job), request,
                         "training")


def preview(upload: Any) -> np.ndarray | None:
    """Show the uploaded file as the app will read it (or a clear error)."""
    return None if upload is None else downscale_for_display(_load(upload))


# ---- tabs ----------------------------------------------------------------------------------------------------------


def example_model(example: Path, models: list[str]) -> str | None:
    """The model an example image is shown with: the shipped weights named after its dataset (the file name's prefix,
    ``edd2020_ACB0004.jpg`` -> ``*.edd2020``), else the default model."""
    dataset = example.name.split("_", 1)[0].lower()
    return next((m for m in models if m.rsplit(".", 1)[-1].lower() == dataset), default_model(models))


def _examples(target: gr.components.Component, model: gr.components.Component | None = None,
              models: list[str] | None = None,
              label: str = "Example images (PolypGen, CC BY 4.0; EDD2020, CC BY-NC-SA 4.0)",
              thumbnail: gr.Image | None = None) -> None:
    """The example images; with ``model``, clicking one also picks the model made for its kind of image. With
    ``thumbnail`` (the tab's image preview), each example shows as a picture (its first column), not only as the
    file name a ``gr.File`` shows, and clicking it fills the preview too."""
    if not EXAMPLES:
        return
    inputs, rows = [target], [[str(p)] for p in EXAMPLES]
    if model is not None:
        inputs, rows = [*inputs, model], [[*row, example_model(p, models or [])] for row, p in zip(rows, EXAMPLES)]
    if thumbnail is not None:
        inputs, rows = [thumbnail, *inputs], [[str(p), *row] for row, p in zip(rows, EXAMPLES)]
    gr.Examples(rows, inputs=inputs, label=label)


def _model_options(models: list[str], prefix: str, tta: bool = False) -> tuple[gr.Dropdown, gr.Checkbox, gr.Checkbox]:
    """The model, TTA and post-processing controls; ``tta`` ticks TTA by default (single images: flip TTA raised
    every shipped model's test Dice, at four network passes per image). Post-processing is ticked: it runs the
    chain recorded with the weights, which was chosen on a validation split (none, for models it did not help)."""
    typed = any_hub_model_allowed()  # free-typed names only when the operator allows any Hub repo
    model = gr.Dropdown(model_choices(models), value=default_model(models), label="Model", allow_custom_value=typed,
                        info="shipped weights, or type a Hugging Face Hub repo id" if typed else "the offered models",
                        elem_id=f"{prefix}-model")
    with gr.Row():
        tta = gr.Checkbox(tta, label="Test-time augmentation (flips; about 4x the time)", elem_id=f"{prefix}-tta")
        post = gr.Checkbox(True, label="Post-processing (the chain recorded with the model's weights)")
    return model, tta, post


def _stops(button: gr.Button, job: Any) -> None:
    """``button`` cancels the tab's running job (this client's only): Gradio cancels the event, the job stops
    within a frame, image or step (:func:`run_job`); ``gradio_client``'s ``Job.cancel()`` uses the same event."""
    button.click(None, cancels=[job], api_visibility="private")


def segment_tab(models: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="segment-upload")
            shown = gr.Image(label="Uploaded image", interactive=False, height=260)
            model, tta, post = _model_options(models, "segment", tta=True)
            show_views = gr.Checkbox(False, label="Show TDC-Enhance views")
            truth = gr.File(label="Ground-truth mask (optional: shows Dice, IoU, HD95)", type="filepath",
                            file_types=IMAGE_TYPES)
            run = gr.Button("Segment", variant="primary", elem_id="segment-button")
            _examples(upload, model, models, thumbnail=shown)
        with gr.Column(scale=2):
            # The slider starts at the left edge: the overlay (the second image) covers the whole frame first.
            slider = gr.ImageSlider(label="Before / after", type="numpy", elem_id="segment-slider", slider_position=0)
            summary = gr.Markdown(label="Summary", show_label=False, elem_id="segment-summary")
            heatmap = gr.Image(label="Confidence map (lesion probability)", type="numpy")
            with gr.Row():
                mask_file = gr.File(label="Mask (PNG)")
                report_file = gr.File(label="Report (JSON)")
            report = gr.JSON(label="Report", elem_id="segment-report")
            disagreement = gr.Image(label="TTA disagreement between flip passes (x4; with TTA only)", type="numpy")
            views = gr.Gallery(label="TDC-Enhance views", columns=4, height="auto")
    upload.change(preview, inputs=upload, outputs=shown, api_name="preview", concurrency_id="preview",
                  concurrency_limit=1)
    run.click(segment, inputs=[upload, model, tta, post, truth, show_views], **_HEAVY,
              outputs=[slider, heatmap, summary, mask_file, report, report_file, disagreement, views],
              api_name="segment")


def compare_tab(models: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="compare-upload")
            chosen = gr.Dropdown(model_choices(models), value=compare_defaults(models), multiselect=True,
                                 max_choices=4, label="Models (1-4)",
                                 elem_id="compare-models")
            with gr.Row():
                tta = gr.Checkbox(False, label="Test-time augmentation")
                post = gr.Checkbox(True, label="Post-processing (recorded chain)")
            run = gr.Button("Compare", variant="primary", elem_id="compare-button")
            _examples(upload, label="Example images")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Overlays", columns=2, height="auto", elem_id="compare-gallery")
            table = gr.Markdown(label="Per-model statistics", show_label=False, elem_id="compare-table")
    run.click(compare, inputs=[upload, chosen, tta, post], outputs=[gallery, table], api_name="compare", **_HEAVY)


def batch_tab(models: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label="Images or a zip of images", file_count="multiple", type="filepath",
                            file_types=[*IMAGE_TYPES, ".zip"], elem_id="batch-upload")
            files.data_model = OneOrMoreFiles  # the API takes one file as well as a list (no custom component)
            model, tta, post = _model_options(models, "batch")
            run = gr.Button("Segment all", variant="primary", elem_id="batch-button")
            stop = gr.Button("Stop", variant="stop", elem_id="batch-stop")
        with gr.Column(scale=2):
            status = gr.Markdown(label="Status", show_label=False, elem_id="batch-status")
            with gr.Row():
                archive = gr.File(label="Masks, overlays + statistics (zip)", elem_id="batch-archive")
                csv_file = gr.File(label="Statistics (CSV)")
            table = gr.Dataframe(headers=["file", "status", "lesion found", "presence score", "lesion %", "lesions",
                                          "mean confidence", "ms", "error"],
                                 label="Per-image statistics", wrap=True)
    job = run.click(batch_event, inputs=[files, model, tta, post], outputs=[archive, csv_file, table, status],
                    api_name="batch", **_HEAVY)
    _stops(stop, job)


def single_image_tab() -> None:
    gr.Markdown("No dataset needed: paint a rough region of interest over the lesion (white brush), press "
                "**Train and segment**, and a small network is trained on patches of this one image. Paint "
                "around the image's border instead to mark normal tissue when the lesion fills the frame.")
    with gr.Row():
        with gr.Column(scale=1):
            editor = checked_image_editor(label="Image and ROI", type="numpy", image_mode="RGBA",
                                          brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                                          transforms=(), layers=False, elem_id="single-editor")
            roi = gr.File(label="…or a ROI file (binary image or labelme JSON)", type="filepath",
                          file_types=[*IMAGE_TYPES, ".json"])
            lowest, highest, default = SINGLE_IMAGE_STEPS
            steps = gr.Slider(lowest, highest, value=default, step=50, label="Training steps (time grows with it)",
                              elem_id="single-steps")
            run = gr.Button("Train and segment", variant="primary", elem_id="single-button")
            stop = gr.Button("Stop", variant="stop", elem_id="single-stop")
        with gr.Column(scale=2):
            overlay = gr.Image(label="Result", type="numpy", elem_id="single-result")
            summary = gr.Markdown(label="Summary", show_label=False, elem_id="single-summary")
            with gr.Row():
                mask = gr.File(label="mask.png")
                overlay_file = gr.File(label="overlay.png")
                record = gr.File(label="sampling.json")
    job = run.click(single_image_event, inputs=[editor, roi, steps],
                    outputs=[overlay, summary, mask, overlay_file, record], api_name="single_image", **_HEAVY)
    _stops(stop, job)


def enhance_tab() -> None:
    gr.Markdown("TDC-Enhance: the texture, detail and colour views that the DynaSiam model reads beside the "
                "original image.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="enhance-upload")
            run = gr.Button("Enhance", variant="primary", elem_id="enhance-button")
            _examples(upload, label="Example images")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Views", columns=2, height="auto", elem_id="enhance-gallery")
    run.click(enhance, inputs=upload, outputs=gallery, api_name="enhance", **_HEAVY)


VIDEO_TYPES = [".mp4", ".avi", ".webm", ".mov", ".mkv"]


def video(upload: Any, model_name: str | None, smoothing: float, lesion_free: bool = False,
          progress: gr.Progress = gr.Progress(), job: Job | None = None):
    """The Video tab: a clip -> the annotated clip (H.264 MP4, plays in browsers), a plot of lesion area over time,
    the per-frame CSV (with each frame's lesion-present decision and score) and a summary with the clip's lesion
    events (false alarms per minute when the clip is known to hold no lesion). ``job`` (:func:`video_event`):
    stops between frames when it is cancelled."""
    if upload is None:
        raise UserError("Upload a video clip first (MP4, AVI, WebM or MOV).")
    segmenter = _segmenter_or_error(model_name)
    path = Path(_file_path(upload))
    folder = _request_dir(job)
    stem = path.stem[:80] or "clip"

    def report(done: int, total: int | None) -> None:
        progress((done, total) if total else (done, None), desc="Segmenting frames", unit="frames")

    try:
        summary = segment_video(segmenter, path, folder / f"{stem}_segmented.mp4", folder / f"{stem}_frames.csv",
                                smoothing=float(smoothing), progress=report,
                                should_stop=job.should_stop if job is not None else None)
    except VideoInputError as err:
        raise UserError(_without_paths(str(err))) from err
    text = (f"**{summary.frames} frames** ({summary.duration_s:.1f} s at {summary.fps_in:.1f} fps, "
            f"{summary.width}x{summary.height}) segmented in {summary.seconds:.1f} s: "
            f"**{summary.processing_fps:.1f} frames per second** on this server · model `{segmenter.name}`"
            + (f" · temporal smoothing {smoothing:.2f}" if smoothing else "")
            + "\n\n" + events_markdown(summary, lesion_free=bool(lesion_free)))
    return summary.out_path, plot_lesion_area(summary.rows), summary.csv_path, text


async def video_event(upload: Any, model_name: str | None, smoothing: float, lesion_free: bool = False,
                      progress: gr.Progress = gr.Progress(), request: gr.Request = None):
    """:func:`video` as a :class:`Job` (the ``/video`` event): Stop or a disconnect stops it between frames."""
    return await run_job(lambda job: video(upload, model_name, smoothing, lesion_free, progress, job), request,
                         "video")


def video_tab(models: list[str]) -> None:
    gr.Markdown(f"Endoscopy video: every frame segmented, the lesion outlined in the returned clip. Clips up to "
                f"{MAX_SECONDS / 60:.0f} minutes, {MAX_FRAMES:,} frames and {MAX_FPS:.0f} frames per second, "
                f"{MAX_SIDE} pixels a side and {MAX_FRAME_PIXELS / 1e6:.1f} MP a frame (4K), checked on every "
                "frame; MP4, AVI, WebM or MOV.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Video clip", file_types=VIDEO_TYPES, type="filepath", elem_id="video-upload")
            model = gr.Dropdown(model_choices(models), value=default_model(models, video=True), label="Model",
                                allow_custom_value=True, elem_id="video-model")
            smoothing = gr.Slider(0.0, 0.9, value=0.0, step=0.1, label="Temporal smoothing (0 = off)",
                                  info="exponential average of each frame's probabilities with the previous ones")
            lesion_free = gr.Checkbox(False, label="This clip holds no lesion (count its events as false alarms)",
                                      elem_id="video-lesion-free")
            run = gr.Button("Segment video", variant="primary", elem_id="video-button")
            stop = gr.Button("Stop", variant="stop", elem_id="video-stop")
        with gr.Column(scale=2):
            out = gr.Video(label="Annotated clip", elem_id="video-output")
            summary = gr.Markdown(label="Summary", show_label=False, elem_id="video-summary")
            plot = gr.Image(label="Lesion area over time (% of the frame)", type="numpy")
            csv_file = gr.File(label="Per-frame statistics (CSV)")
    job = run.click(video_event, inputs=[upload, model, smoothing, lesion_free],
                    outputs=[out, plot, csv_file, summary], api_name="video", **_HEAVY)
    _stops(stop, job)


def build_demo() -> gr.Blocks:
    """The whole page: a header and one tab per task."""
    models = available_models()
    with gr.Blocks(title="medseg — lesion segmentation", delete_cache=(KEEP_OUTPUTS_S, KEEP_OUTPUTS_S)) as demo:
        gr.Markdown(
            "# medseg\nSegment polyps and other lesions in endoscopy images. Drop an image "
            f"({IMAGE_FORMAT_NAMES}; up to {MAX_IMAGE_PIXELS // 1_000_000} MP) and press **Segment**. "
            "Research software: not a medical device. A region is drawn only when it passes the lesion-present rule "
            "recorded with the model (chosen on validation frames with and without polyps); otherwise the result "
            "says **No lesion found**, with the frame's score and the threshold. Its false alarms and missed lesions "
            "are measured in the model card."
        )
        refused = refused_note(refused_models())
        if refused:
            gr.Markdown(refused, elem_id="refused-models")
        with gr.Tab("Segment"):
            segment_tab(models)
        with gr.Tab("Compare"):
            compare_tab(models)
        with gr.Tab("Batch"):
            batch_tab(models)
        with gr.Tab("Single image"):
            single_image_tab()
        with gr.Tab("Video"):
            video_tab(models)
        with gr.Tab("Enhance"):
            enhance_tab()
    _DEMOS.add(demo)
    return demo


def limit_per_client(demo: gr.Blocks, per_session: int = MAX_PENDING_PER_CLIENT,
                     per_address: int = MAX_PENDING_PER_ADDRESS) -> bool:
    """Refuse a new event when its client (Gradio session) already has ``per_session`` events queued or running,
    or its address ``per_address`` (0: no limit). Gradio has no such setting, so the queue's ``push`` is wrapped;
    returns False (and logs) when this Gradio version's queue does not have the expected shape."""
    queue = getattr(demo, "_queue", None)
    if queue is None or not hasattr(queue, "push") or not hasattr(queue, "event_queue_per_concurrency_id"):
        log.warning("this Gradio version's queue cannot be limited per client")
        return False
    push = queue.push

    def events() -> list[Any]:
        waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
        running = [e for jobs in getattr(queue, "active_jobs", None) or [] if jobs for e in jobs]
        return waiting + running

    def address(request: Any) -> str | None:
        return getattr(getattr(request, "client", None), "host", None)

    async def limited_push(body: Any, request: Any, username: Any) -> Any:
        current = events()
        session = getattr(body, "session_hash", None)
        if per_session and session and sum(e.session_hash == session for e in current) >= per_session:
            return False, (f"You already have {per_session} requests waiting or running; wait for one to finish "
                           "before sending another."), "queue_full"
        host = address(request)
        if per_address and host and sum(address(e.request) == host for e in current) >= per_address:
            return False, f"Your address already has {per_address} requests waiting or running.", "queue_full"
        return await push(body, request, username)

    queue.push = limited_push
    return True


def configure_queue(demo: gr.Blocks, size: int = QUEUE_SIZE) -> gr.Blocks:
    """The app's queue: ``size`` events in all, heavy events on :data:`WORKERS` shared workers (each event's
    ``concurrency_id`` is ``"heavy"``), at most :data:`MAX_PENDING_PER_CLIENT` per client. Gradio tells each waiting
    user their position. ``launch``, the tests and ``bench/load.py`` all use this."""
    demo.queue(default_concurrency_limit=WORKERS, max_size=size)
    limit_per_client(demo)
    return demo


class RequestBodyLimit:
    """ASGI middleware: refuse an HTTP request whose body is over ``max_bytes`` (413), from its ``Content-Length``
    before anything is read, or, for a body sent without one, by ending the request once that much has arrived.
    Gradio's ``max_file_size`` bounds each file; this bounds one upload request of many files."""

    def __init__(self, app: Any, max_bytes: int = MAX_UPLOAD_REQUEST_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            log.info("refused a %s MB request body (limit %s MB)", int(length) // 1_000_000,
                     self.max_bytes // 1_000_000)
            from starlette.responses import PlainTextResponse

            response = PlainTextResponse(f"The upload is {int(length) / 1e6:.0f} MB; one request may carry at most "
                                         f"{self.max_bytes / 1e6:.0f} MB.", status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    log.info("ended a request body over %s MB", self.max_bytes // 1_000_000)
                    return {"type": "http.disconnect"}
            return message

        return await self.app(scope, limited_receive, send)


def launch_options() -> dict[str, Any]:
    """The upload limits ``launch`` gives Gradio: each file at most :data:`MAX_UPLOAD`, each request at most
    :data:`MAX_UPLOAD_REQUEST_BYTES` (:class:`RequestBodyLimit`)."""
    from starlette.middleware import Middleware

    return {"max_file_size": MAX_UPLOAD,
            "app_kwargs": {"middleware": [Middleware(RequestBodyLimit, max_bytes=MAX_UPLOAD_REQUEST_BYTES)]}}


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs: Any) -> None:
    """Serve ``demo`` on ``host`` (default ``GRADIO_SERVER_NAME`` or 127.0.0.1), never through a public share link;
    ``kwargs`` go to Gradio's ``launch`` (the tests pass ``prevent_thread_lock``)."""
    os.umask(0o077)  # everything the server writes (its cache, our outputs) is private to its user
    configure_queue(demo).launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=port,
        share=False,
        show_error=True,
        **launch_options(),
        **kwargs,
    )


def run(args: argparse.Namespace) -> None:
    """Serve the web app on ``args.host``/``args.port`` (``medseg-app`` calls this)."""
    logging.basicConfig(level=logging.INFO)
    launch(build_demo(), args.host, args.port)


def main(argv: list[str] | None = None) -> int:
    """``medseg-app``: serve the web app; returns the exit status."""
    from .commands import app

    return app(argv)


if __name__ == "__main__":
    raise SystemExit(main())
