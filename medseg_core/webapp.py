"""The web app's wiring (Gradio): one handler per action, one small builder per tab; the work is done elsewhere.

    medseg-app                             # http://127.0.0.1:7860, shipped weights from weights/
    python app.py                          # the same (the Hugging Face Space entry point)
    MEDSEG_HUB_MODELS=owner/repo medseg-app   # also offer models from the Hugging Face Hub

Handlers only call ``medseg_core`` (Segmenter, batch, single-image training, TDC-Enhance, presentation helpers in
:mod:`medseg_core.visualize`) and turn failures into ``gr.Error`` messages.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from .batch import expand_inputs, segment_files, write_results_zip
from .data import decode_mask, write_png
from .hub import WeightsNotFoundError, list_local_weights
from .inference import MAX_IMAGE_PIXELS, ImageInputError, Segmenter, SegResult, load_image_file, to_rgb_uint8
from .metrics import segmentation_metrics
from .postprocess import PostprocessSpec
from .single_image import SingleImageConfig, read_roi, segment_single_image, write_result
from .visualize import confidence_heatmap, enhance_gallery, mask_for_file, summary_markdown

__all__ = ["build_demo", "launch", "main"]

log = logging.getLogger("medseg.app")

OUTPUT_DIR = Path(tempfile.gettempdir()) / "medseg-app"
KEEP_OUTPUTS_S = 3600
MAX_UPLOAD = "50mb"
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
IMAGE_TYPES = ["image", ".tif", ".tiff"]


def _examples_dir() -> Path:
    """``MEDSEG_EXAMPLES_DIR``; else ``examples/`` beside the package (a checkout); else in the working folder."""
    if os.environ.get("MEDSEG_EXAMPLES_DIR"):
        return Path(os.environ["MEDSEG_EXAMPLES_DIR"])
    beside = Path(__file__).resolve().parents[1] / "examples"
    return beside if beside.is_dir() else Path("examples")


EXAMPLES = sorted(_examples_dir().glob("*.jpg"))


# ---- handlers ------------------------------------------------------------------------------------------------------


def available_models() -> list[str]:
    """Weights shipped in ``weights/`` plus Hub repo ids listed in ``MEDSEG_HUB_MODELS`` (comma-separated)."""
    hub = [m.strip() for m in os.environ.get("MEDSEG_HUB_MODELS", "").split(",") if m.strip()]
    return list_local_weights() + [m for m in hub if m not in list_local_weights()]


def default_model(models: list[str]) -> str | None:
    wanted = os.environ.get("MEDSEG_DEFAULT_MODEL", "unet_lite0.polyp")
    return wanted if wanted in models else (models[0] if models else None)


@functools.lru_cache(maxsize=4)
def get_segmenter(name: str) -> Segmenter:
    """One Segmenter per model name, built on first use (weights resolved locally or from the Hub cache)."""
    return Segmenter.from_pretrained(name)


def _postprocess(on: bool) -> PostprocessSpec:
    """The post-processing checkbox: the chain recorded with the model's weights, or none."""
    return "recorded" if on else "none"


def _segmenter_or_error(name: str | None) -> Segmenter:
    if not name:
        raise gr.Error("No model is available: put a weights folder in weights/ or set MEDSEG_HUB_MODELS.")
    # Typed values may only name a Hub repo, never a path on the server.
    if name not in available_models() and (not HUB_REPO_ID.match(name) or ".." in name):
        raise gr.Error(f"Unknown model {name!r}: choose one from the list or type a Hub repo id (owner/name).")
    try:
        return get_segmenter(name)
    except WeightsNotFoundError as err:
        raise gr.Error(str(err)) from err


def _file_path(upload: Any) -> str:
    if upload is None:
        raise gr.Error("Upload an image first (or pick one of the examples).")
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def _load(upload: Any) -> np.ndarray:
    try:
        return load_image_file(_file_path(upload))
    except ImageInputError as err:
        raise gr.Error(str(err)) from err


def _request_dir() -> Path:
    """A fresh folder for one request's downloads; folders older than an hour are removed."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_DIR.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > KEEP_OUTPUTS_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = OUTPUT_DIR / uuid.uuid4().hex
    folder.mkdir()
    return folder


def _ground_truth_scores(upload: Any, result: SegResult) -> dict[str, float] | None:
    if upload is None:
        return None
    truth = _load(upload)
    if truth.shape[:2] != result.mask.shape:
        raise gr.Error(f"The ground-truth mask is {truth.shape[1]}x{truth.shape[0]} but the image is "
                       f"{result.mask.shape[1]}x{result.mask.shape[0]}; they must be the same size.")
    n = max(2, int(result.probs.shape[0]))
    return segmentation_metrics(result.mask, decode_mask(truth, "neopolyp" if n == 3 else "binary"), n)


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
        raise gr.Error(f"Segmentation failed: {type(err).__name__}: {err}") from err
    scores = _ground_truth_scores(truth, result)
    folder = _request_dir()
    stem = Path(_file_path(upload)).stem[:80] or "image"
    mask_path = write_png(folder / f"{stem}_mask.png", mask_for_file(result.mask, segmenter.num_classes))
    report = {"file": Path(_file_path(upload)).name, **result.stats}
    if scores is not None:
        report["ground_truth"] = scores
    report_path = folder / f"{stem}_report.json"
    report_path.write_text(json.dumps(report, indent=2))
    disagreement = result.disagreement
    return (
        (image, result.overlay),
        confidence_heatmap(image, result.confidence),
        summary_markdown(result.stats, scores),
        str(mask_path),
        report,
        str(report_path),
        confidence_heatmap(image, np.clip(disagreement * 4, 0, 1)) if disagreement is not None else None,
        enhance_gallery(image) if show_views else None,
    )


def compare(upload: Any, model_names: list[str] | None, tta: bool, postprocess: bool):
    """The Compare tab: one image through 1-4 models; overlays side by side and a timing table."""
    names = list(dict.fromkeys(model_names or []))
    if not 1 <= len(names) <= 4:
        raise gr.Error("Choose between one and four models to compare.")
    image = _load(upload)
    gallery, rows = [], ["| model | lesion area % | lesions | mean confidence | time (ms) |", "|---|---|---|---|---|"]
    for name in names:
        result = _segmenter_or_error(name)(image, tta=tta, postprocess=_postprocess(postprocess))
        s = result.stats
        gallery.append((result.overlay, f"{name} · {s['inference_ms']:.0f} ms"))
        conf = f"{s['mean_confidence']:.3f}" if s["mean_confidence"] is not None else "—"
        rows.append(f"| `{name}` | {s['lesion_percent']:.2f} | {s['lesion_count']} | {conf} | "
                    f"{s['inference_ms']:.0f} |")
    return gallery, "\n".join(rows)


def batch(uploads: list[Any] | None, model_name: str | None, tta: bool, postprocess: bool,
          progress: gr.Progress = gr.Progress()):
    """The Batch tab: images and/or zip archives -> a zip of masks, overlays and statistics.csv, and the table."""
    if not uploads:
        raise gr.Error("Upload one or more images, or a zip of images.")
    segmenter = _segmenter_or_error(model_name)
    folder = _request_dir()
    try:
        paths = expand_inputs([_file_path(u) for u in uploads], folder / "inputs")
    except ValueError as err:
        raise gr.Error(str(err)) from err
    if not paths:
        raise gr.Error("The upload holds no images (PNG, JPEG, TIFF, BMP).")
    rows = segment_files(segmenter, paths, folder / "masks", tta=tta, postprocess=_postprocess(postprocess),
                         progress=lambda items: progress.tqdm(items, desc="Segmenting"))
    archive = write_results_zip(folder / "masks", folder / "medseg_masks.zip")
    table = [[r["file"], r["status"], r["lesion_percent"], r["lesion_count"], r["mean_confidence"],
              r["inference_ms"], r["error"]] for r in rows]
    ok = sum(r["status"] == "ok" for r in rows)
    return str(archive), str(folder / "masks" / "statistics.csv"), table, f"{ok} of {len(rows)} images segmented."


def enhance(upload: Any) -> list[tuple[np.ndarray, str]]:
    """The Enhance tab: the image and its three TDC-Enhance views (texture, detail, colour)."""
    return enhance_gallery(_load(upload))


def _roi_from_editor(editor: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The background image and the painted ROI (any non-transparent pixel of any layer) of a gr.ImageEditor value."""
    if not editor or editor.get("background") is None:
        raise gr.Error("Upload an image into the editor first, then paint the region of interest on it.")
    image = to_rgb_uint8(editor["background"])
    h, w = image.shape[:2]
    roi = np.zeros((h, w), bool)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == (h, w):
            roi |= layer[..., 3] > 0
    return image, roi


def single_image(editor: dict[str, Any] | None, roi_file: Any, steps: int,
                 progress: gr.Progress = gr.Progress()):
    """The Single image tab: train a small network on one image from a painted (or uploaded) ROI and segment it."""
    image, roi = _roi_from_editor(editor)
    if roi_file is not None:
        try:
            roi = read_roi(_file_path(roi_file), image.shape[:2])
        except ValueError as err:
            raise gr.Error(str(err)) from err
    if not roi.any():
        raise gr.Error("Paint the region of interest on the image with the brush (or upload a ROI file).")
    if roi.all():
        raise gr.Error("The ROI covers the whole image: leave some normal tissue unpainted.")
    config = SingleImageConfig(steps=int(steps))
    try:
        result = segment_single_image(image, roi, config, progress=progress, show_progress=False)
    except ValueError as err:
        raise gr.Error(str(err)) from err
    files = write_result(result, _request_dir())
    area = 100.0 * float(result.mask.mean())
    note = ("The ROI's corners are painted, so it was read as **normal tissue**: the result is its complement.  \n"
            if result.complement else "")
    summary = (f"{note}**Lesion area:** {area:.2f} % of the image · trained {config.steps} steps in "
               f"{result.seconds:.1f} s on the {config.device.upper()}")
    return result.overlay, summary, *[str(f) for f in files.values()]


def preview(upload: Any) -> np.ndarray | None:
    """Show the uploaded file as the app will read it (or a clear error)."""
    return None if upload is None else _load(upload)


# ---- tabs ----------------------------------------------------------------------------------------------------------


def _examples(target: gr.components.Component, label: str = "Example images (PolypGen, CC BY 4.0)") -> None:
    if EXAMPLES:
        gr.Examples([[str(p)] for p in EXAMPLES], inputs=[target], label=label)


def _model_options(models: list[str], prefix: str) -> tuple[gr.Dropdown, gr.Checkbox, gr.Checkbox]:
    model = gr.Dropdown(models, value=default_model(models), label="Model", allow_custom_value=True,
                        info="shipped weights, or type a Hugging Face Hub repo id", elem_id=f"{prefix}-model")
    with gr.Row():
        tta = gr.Checkbox(False, label="Test-time augmentation (flips)")
        post = gr.Checkbox(False, label="Post-processing (the chain recorded with the model's weights)")
    return model, tta, post


def segment_tab(models: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="segment-upload")
            shown = gr.Image(label="Uploaded image", interactive=False, height=260)
            model, tta, post = _model_options(models, "segment")
            show_views = gr.Checkbox(False, label="Show TDC-Enhance views")
            truth = gr.File(label="Ground-truth mask (optional: shows Dice, IoU, HD95)", type="filepath",
                            file_types=["image"])
            run = gr.Button("Segment", variant="primary", elem_id="segment-button")
            _examples(upload)
        with gr.Column(scale=2):
            slider = gr.ImageSlider(label="Before / after", type="numpy", elem_id="segment-slider")
            summary = gr.Markdown(elem_id="segment-summary")
            heatmap = gr.Image(label="Confidence map (lesion probability)", type="numpy")
            with gr.Row():
                mask_file = gr.File(label="Mask (PNG)")
                report_file = gr.File(label="Report (JSON)")
            report = gr.JSON(label="Report", elem_id="segment-report")
            disagreement = gr.Image(label="TTA disagreement between flip passes (x4; with TTA only)", type="numpy")
            views = gr.Gallery(label="TDC-Enhance views", columns=4, height="auto")
    upload.change(preview, inputs=upload, outputs=shown, api_name="preview")
    run.click(segment, inputs=[upload, model, tta, post, truth, show_views],
              outputs=[slider, heatmap, summary, mask_file, report, report_file, disagreement, views],
              api_name="segment")


def compare_tab(models: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="compare-upload")
            chosen = gr.Dropdown(models, value=models[:2], multiselect=True, max_choices=4, label="Models (1-4)")
            with gr.Row():
                tta = gr.Checkbox(False, label="Test-time augmentation")
                post = gr.Checkbox(False, label="Post-processing (recorded chain)")
            run = gr.Button("Compare", variant="primary")
            _examples(upload, "Example images")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Overlays", columns=2, height="auto")
            table = gr.Markdown()
    run.click(compare, inputs=[upload, chosen, tta, post], outputs=[gallery, table], api_name="compare")


def batch_tab(models: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label="Images or a zip of images", file_count="multiple", type="filepath",
                            file_types=[*IMAGE_TYPES, ".zip"])
            model, tta, post = _model_options(models, "batch")
            run = gr.Button("Segment all", variant="primary")
        with gr.Column(scale=2):
            status = gr.Markdown()
            with gr.Row():
                archive = gr.File(label="Masks, overlays + statistics (zip)")
                csv_file = gr.File(label="Statistics (CSV)")
            table = gr.Dataframe(headers=["file", "status", "lesion %", "lesions", "mean confidence", "ms", "error"],
                                 label="Per-image statistics", wrap=True)
    run.click(batch, inputs=[files, model, tta, post], outputs=[archive, csv_file, table, status], api_name="batch")


def single_image_tab() -> None:
    gr.Markdown("No dataset needed: paint a rough region of interest over the lesion (white brush), press "
                "**Train and segment**, and a small network is trained on patches of this one image. Paint "
                "around the image's border instead to mark normal tissue when the lesion fills the frame.")
    with gr.Row():
        with gr.Column(scale=1):
            editor = gr.ImageEditor(label="Image and ROI", type="numpy", image_mode="RGBA",
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                                    transforms=(), layers=False, elem_id="single-editor")
            roi = gr.File(label="…or a ROI file (binary image or labelme JSON)", type="filepath",
                          file_types=["image", ".json"])
            steps = gr.Slider(50, 600, value=450, step=50, label="Training steps (time grows with it)")
            run = gr.Button("Train and segment", variant="primary")
        with gr.Column(scale=2):
            overlay = gr.Image(label="Result", type="numpy")
            summary = gr.Markdown()
            with gr.Row():
                mask = gr.File(label="mask.png")
                overlay_file = gr.File(label="overlay.png")
                record = gr.File(label="sampling.json")
    run.click(single_image, inputs=[editor, roi, steps], outputs=[overlay, summary, mask, overlay_file, record],
              api_name="single_image")


def enhance_tab() -> None:
    gr.Markdown("TDC-Enhance: the texture, detail and colour views that the DynaSiam model reads beside the "
                "original image.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="enhance-upload")
            run = gr.Button("Enhance", variant="primary")
            _examples(upload, "Example images")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Views", columns=2, height="auto")
    run.click(enhance, inputs=upload, outputs=gallery, api_name="enhance")


def build_demo() -> gr.Blocks:
    """The whole page: a header and one tab per task."""
    models = available_models()
    with gr.Blocks(title="medseg — lesion segmentation", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# medseg\nSegment polyps and other lesions in endoscopy images. Drop an image (PNG, JPEG, TIFF, BMP; "
            f"up to {MAX_IMAGE_PIXELS // 1_000_000} MP) and press **Segment**. Research software: not a medical device."
        )
        with gr.Tab("Segment"):
            segment_tab(models)
        with gr.Tab("Compare"):
            compare_tab(models)
        with gr.Tab("Batch"):
            batch_tab(models)
        with gr.Tab("Single image"):
            single_image_tab()
        with gr.Tab("Enhance"):
            enhance_tab()
    return demo


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None) -> None:
    """Serve ``demo`` on ``host`` (default ``GRADIO_SERVER_NAME`` or 127.0.0.1), never through a public share link."""
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=port,
        share=False,
        max_file_size=MAX_UPLOAD,
        show_error=True,
    )


def main(argv: list[str] | None = None) -> None:
    """``medseg-app``: serve the web app."""
    p = argparse.ArgumentParser(prog="medseg-app", description="Serve the medseg web app (Gradio). Models come from "
                                "weights/ (MEDSEG_WEIGHTS_DIR) and MEDSEG_HUB_MODELS=owner/repo,...")
    p.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    launch(build_demo(), args.host, args.port)


if __name__ == "__main__":
    main()
