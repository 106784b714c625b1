"""Segment many images at once: files or a zip in, a folder (and zip) of masks plus a CSV of statistics out.

One bad file never stops a batch: its row says what was wrong.
"""

from __future__ import annotations

import csv
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2

from .data import IMAGE_EXTENSIONS
from .inference import ImageInputError, Segmenter, load_image_file

__all__ = ["BATCH_COLUMNS", "MAX_ZIP_FILES", "expand_inputs", "segment_files", "write_results_zip"]

log = logging.getLogger(__name__)

MAX_ZIP_FILES = 1000
MAX_ZIP_BYTES = 2_000_000_000
BATCH_COLUMNS = ("file", "status", "width", "height", "lesion_pixels", "lesion_percent", "lesion_count",
                 "mean_confidence", "inference_ms", "mask", "error")


def expand_inputs(paths: Iterable[str | os.PathLike], workdir: str | os.PathLike) -> list[Path]:
    """Image paths from a mix of image files and zip archives (images inside a zip are extracted to ``workdir``).

    Archive members are flattened to their base names (no path from the archive reaches the file system), only
    image extensions are taken, and archives above ``MAX_ZIP_FILES`` images or ``MAX_ZIP_BYTES`` are refused.
    """
    out: list[Path] = []
    workdir = Path(workdir)
    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() != ".zip":
            out.append(path)
            continue
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{path.name} is not a readable zip archive") from err
        with archive:
            members = [m for m in archive.infolist()
                       if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_EXTENSIONS
                       and not Path(m.filename).name.startswith(".")]
            if len(members) > MAX_ZIP_FILES:
                raise ValueError(f"{path.name} holds {len(members)} images; the limit is {MAX_ZIP_FILES}")
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise ValueError(f"{path.name} unpacks to more than {MAX_ZIP_BYTES // 1_000_000} MB")
            target = workdir / path.stem
            target.mkdir(parents=True, exist_ok=True)
            used: set[str] = set()
            for m in members:
                name = Path(m.filename).name
                stem, suffix = Path(name).stem, Path(name).suffix
                n = 1
                while name in used:  # same base name in two archive folders
                    name, n = f"{stem}_{n}{suffix}", n + 1
                used.add(name)
                (target / name).write_bytes(archive.read(m))
                out.append(target / name)
    return out


def segment_files(
    segmenter: Segmenter,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    tta: bool = False,
    postprocess: Sequence[str] = (),
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[dict[str, Any]]:
    """Segment each file, write ``<stem>_mask.png`` (0/255 for binary models, class indices otherwise) to
    ``out_dir`` and ``statistics.csv`` beside them; return one row per file (``BATCH_COLUMNS``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    seen: set[str] = set()
    for raw in (progress or (lambda x: x))(list(paths)):
        path = Path(raw)
        row: dict[str, Any] = dict.fromkeys(BATCH_COLUMNS, "")
        row["file"] = path.name
        try:
            image = load_image_file(path)
            result = segmenter(image, tta=tta, postprocess=postprocess)
        except ImageInputError as err:
            row.update(status="error", error=str(err))
            rows.append(row)
            continue
        stem = path.stem
        while stem in seen:
            stem += "_"
        seen.add(stem)
        mask_name = f"{stem}_mask.png"
        mask = result.mask * 255 if segmenter.num_classes == 2 else result.mask
        cv2.imwrite(str(out / mask_name), mask)
        s = result.stats
        row.update(status="ok", width=s["image_size"][0], height=s["image_size"][1], lesion_pixels=s["lesion_pixels"],
                   lesion_percent=s["lesion_percent"], lesion_count=s["lesion_count"],
                   mean_confidence=s["mean_confidence"] if s["mean_confidence"] is not None else "",
                   inference_ms=s["inference_ms"], mask=mask_name)
        rows.append(row)
    with open(out / "statistics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(BATCH_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def write_results_zip(out_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip the masks and ``statistics.csv`` of a batch folder."""
    out_dir, zip_path = Path(out_dir), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(out_dir.iterdir()):
            if f.is_file() and f != zip_path:
                z.write(f, arcname=f.name)
    return zip_path
