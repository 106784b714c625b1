"""The one engine for segmenting many files: images, folders and zips in; masks, overlays and a CSV out.

    medseg-segment IMAGE_OR_FOLDER_OR_ZIP [...] --out DIR [--model unet_lite2.polyp] [--tta] [--postprocess none]

For every image ``<stem>.<ext>`` it writes what :func:`medseg_core.io.write_mask` writes (``<stem>_mask.png``: 0/255
for binary models, class indices for multi-class ones, one ``<stem>_<class>.png`` per class for multi-label ones; and
``<stem>_colour.png``, the classes in their colours), ``<stem>_overlay.png`` (the image with the lesions tinted and
outlined), and one ``statistics.csv`` row (with each class's area for multi-class and multi-label models). The
app's Batch tab, this command and ``python -m medseg_core.predict_folder`` all call :func:`segment_files`, so the
same input and options give byte-identical files from every door. One bad file never stops a batch: its row says
what was wrong.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .cli import UsageError
from .commands import segment as segment_command
from .inference import ImageInputError, Segmenter, load_image_file
from .io import IMAGE_EXTENSIONS, write_mask, write_png
from .labels import LabelSchema
from .postprocess import PostprocessSpec
from .safety import ExtractionBudget, RejectedInput, ZipLimits, extract_zip

__all__ = ["BATCH_COLUMNS", "MAX_ZIP_FILES", "BatchCancelled", "expand_inputs", "main", "segment_files", "unique_stems",
           "write_results_zip", "write_statistics"]

log = logging.getLogger(__name__)

MAX_ZIP_FILES = 1000
MAX_ZIP_BYTES = 1_000_000_000
#: statistics.csv columns. Timings are left out so that a run's files depend on its inputs and options only.
#: ``lesion_present``/``presence_score``: the image-level decision recorded with the weights (medseg_core.presence).
BATCH_COLUMNS = ("file", "status", "width", "height", "lesion_present", "presence_score", "lesion_pixels",
                 "lesion_percent", "lesion_count", "mean_confidence", "mask", "overlay", "error")
DEFAULT_MODEL = "unet_lite2.polyp"  # the most accurate polyp model
VIDEO_MODEL = "unet_lite0.polyp_fast"  # the one that keeps up with video on a CPU


class BatchCancelled(RuntimeError):
    """Raised inside :func:`segment_files` when its ``should_stop`` callable says the run is no longer wanted."""


def default_model_name(video: bool = False) -> str:
    """The model commands and the app start with: ``MEDSEG_DEFAULT_MODEL`` (else :data:`DEFAULT_MODEL`), or for
    video ``MEDSEG_VIDEO_MODEL`` (else :data:`VIDEO_MODEL`)."""
    if video:
        return os.environ.get("MEDSEG_VIDEO_MODEL", VIDEO_MODEL)
    return os.environ.get("MEDSEG_DEFAULT_MODEL", DEFAULT_MODEL)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _extract_zip(path: Path, target: Path, limits: ZipLimits, budget: ExtractionBudget | None,
                 used: int) -> tuple[list[Path | RejectedInput], int]:
    return extract_zip(path, target, limits, tuple(IMAGE_EXTENSIONS), budget=budget, used=used)


def expand_inputs(paths: Iterable[str | os.PathLike], workdir: str | os.PathLike,
                  budget: ExtractionBudget | None = None,
                  limits: ZipLimits | None = None) -> list[Path | RejectedInput]:
    """Image paths from a mix of image files, folders (their images, not recursive) and zip archives.

    Zip members are streamed to ``workdir/<zip stem>`` (private folders), flattened to their base names (no path
    from the archive reaches the file system); only image extensions are taken. Caps (:class:`ZipLimits`, default
    ``MAX_ZIP_FILES`` members, 256 MB per member, ``MAX_ZIP_BYTES`` per call, 200:1 compression): a member over its
    cap or failing its CRC comes back as a :class:`~medseg_core.safety.RejectedInput` (its row says why); more
    members, more bytes in all, or more than the server's ``budget`` raise ``ValueError``. Other files are passed on
    (their rows will say what is wrong).
    """
    limits = limits or ZipLimits(max_members=MAX_ZIP_FILES, max_total_bytes=MAX_ZIP_BYTES)
    out: list[Path | RejectedInput] = []
    used = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += _images_in(path)
        elif path.suffix.lower() == ".zip":
            members, size = _extract_zip(path, Path(workdir) / path.stem, limits, budget, used)
            out += members
            used += size
        else:
            out.append(path)
    return out


def unique_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The output stem of each input: its file stem, with ``_`` appended while an earlier input took it."""
    seen: set[str] = set()
    stems = []
    for raw in paths:
        stem = Path(raw).stem
        while stem in seen:
            stem += "_"
        seen.add(stem)
        stems.append(stem)
    return stems


def segment_files(
    segmenter: Segmenter,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    tta: bool = False,
    postprocess: PostprocessSpec | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    stems: Sequence[str] | None = None,
    write_csv: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Segment each file into ``out_dir`` (masks, overlays, ``statistics.csv``); return one row per file.

    Rows hold ``BATCH_COLUMNS`` plus ``inference_ms`` (and ``percent_<class>`` for multi-class and multi-label
    models). ``postprocess``: ``"recorded"``, ``"none"`` or step names (None: the segmenter's default).
    ``progress`` wraps the list of paths (e.g. ``tqdm`` or ``gr.Progress().tqdm``). ``stems`` names the outputs
    (default :func:`unique_stems`; a process given a share of a larger list passes that list's stems), and
    ``write_csv=False`` leaves ``statistics.csv`` to whoever gathers the rows (:func:`write_statistics`).
    ``should_stop`` is asked before every image; when it returns True the run stops with :class:`BatchCancelled`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    paths = list(paths)
    stems = list(stems) if stems is not None else unique_stems(paths)
    class_columns = segmenter.schema.task != "binary"  # per-class areas, named by the schema
    for raw, stem in (progress or (lambda x: x))(list(zip(paths, stems))):
        if should_stop is not None and should_stop():
            raise BatchCancelled(f"batch cancelled after {len(rows)} of {len(paths)} images")
        path = Path(raw)
        row: dict[str, Any] = dict.fromkeys(BATCH_COLUMNS, "")
        row["file"] = path.name
        try:
            if isinstance(raw, RejectedInput):
                raise ImageInputError(raw.reason)
            image = load_image_file(path)
            result = segmenter(image, tta=tta, postprocess=postprocess)
        except ImageInputError as err:
            row.update(status="error", error=str(err), inference_ms="")
            rows.append(row)
            continue
        written = write_mask(out, stem, result.mask, segmenter.schema)
        mask_name = " ".join(p.name for k, p in written.items() if k != "colour")
        overlay_name = write_png(out / f"{stem}_overlay.png", result.overlay).name
        s = result.stats
        row.update(status="ok", width=s["image_size"][0], height=s["image_size"][1],
                   lesion_present=int(s["lesion_present"]), presence_score=s["presence_score"],
                   lesion_pixels=s["lesion_pixels"],
                   lesion_percent=s["lesion_percent"], lesion_count=s["lesion_count"],
                   mean_confidence=s["mean_confidence"] if s["mean_confidence"] is not None else "",
                   mask=mask_name, overlay=overlay_name, inference_ms=s["inference_ms"],
                   **{f"percent_{name}": c["percent"] for name, c in s["classes"].items() if class_columns})
        rows.append(row)
    if write_csv:
        write_statistics(out, rows, segmenter.schema)
    return rows


def write_statistics(out_dir: str | os.PathLike, rows: Sequence[dict[str, Any]], schema: LabelSchema) -> Path:
    """``statistics.csv``: one row per input file, ``BATCH_COLUMNS`` with each class's area before ``error`` for
    multi-class and multi-label schemas. Timings are left out, so the file depends on inputs and options only."""
    class_columns = [f"percent_{n}" for n in schema.foreground] if schema.task != "binary" else []
    path = Path(out_dir) / "statistics.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*BATCH_COLUMNS[:-1], *class_columns, BATCH_COLUMNS[-1]],
                                extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_results_zip(out_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip the masks, overlays and ``statistics.csv`` of a batch folder."""
    out_dir, zip_path = Path(out_dir), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(out_dir.iterdir()):
            if f.is_file() and f != zip_path:
                z.write(f, arcname=f.name)
    return zip_path


def run(args: argparse.Namespace) -> int:
    """Segment ``args.inputs`` into ``args.out`` (arguments parsed by
    :func:`medseg_core.commands.parse_segment_args`); the exit status is 1 when no image could be segmented. An
    unknown model or an unreadable zip is a usage error (:class:`~medseg_core.cli.UsageError`).

    Under ``accelerate launch --num_processes N`` every process takes a share of the files (as ``medseg-evaluate``
    does) and the main process writes ``statistics.csv`` for all of them, in input order.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    device = args.device or (str(state.device) if state.num_processes > 1 else None)
    segmenter = Segmenter.from_pretrained(args.model or default_model_name(), device=device, threshold=args.threshold,
                                          apply_presence=args.presence)
    with tempfile.TemporaryDirectory(prefix="medseg-segment-") as work:
        try:
            paths = expand_inputs(args.inputs, work)
        except ValueError as err:
            raise UsageError(str(err)) from err
        items = list(zip(paths, unique_stems(paths)))
        with state.split_between_processes(items) as shard:
            rows = segment_files(segmenter, [p for p, _ in shard], args.out, tta=args.tta, postprocess=args.postprocess,
                                 stems=[st for _, st in shard], write_csv=False,
                                 progress=lambda items: tqdm(items, desc="segment", disable=args.no_progress
                                                             or not state.is_local_main_process))
    if state.num_processes > 1:
        rows = gather_object(rows)
        if not state.is_main_process:
            return 0
    write_statistics(args.out, rows, segmenter.schema)
    ok = sum(r["status"] == "ok" for r in rows)
    for r in rows:
        if r["status"] != "ok":
            log.warning("%s: %s", r["file"], r["error"])
    log.info("segmented %d of %d images into %s", ok, len(rows), args.out)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """``medseg-segment``: returns the exit status (0 done, 1 no image segmented, 2 usage error)."""
    return segment_command(argv)


if __name__ == "__main__":
    sys.exit(main())
