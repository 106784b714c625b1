"""Segment every image in a folder and write a mask PNG and an overlay per image, through ``Segmenter``.

    python -m medseg_core.predict_folder --model weights/unet_lite0.polyp --images DIR --out DIR [--tta]

For ``<stem>.<ext>`` it writes ``<out>/<stem>_mask.png`` and ``<out>/<stem>_overlay.png``. Binary models' masks are
grey 0/255; multi-class masks are RGB in the overlay colours (red class 1, green class 2, ...), which is the
NeoPolyp encoding, so ``read_mask(path, "neopolyp")`` reads a 3-class result back.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from .data import pairs_from_folders
from .inference import CLASS_COLOURS, ImageInputError, Segmenter, load_image_file

__all__ = ["main", "mask_to_image", "parse_args", "predict_folder", "write_png"]

log = logging.getLogger("medseg.predict_folder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m medseg_core.predict_folder",
        description="Segment every image in a folder; write <stem>_mask.png and <stem>_overlay.png per image.",
    )
    p.add_argument("--model", required=True, help="weights folder, a name under weights/, or a Hub repo id")
    p.add_argument("--images", required=True, help="folder of images (png, jpg, bmp, tif)")
    p.add_argument("--out", required=True, help="folder to write masks and overlays to (created if missing)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold (binary models)")
    p.add_argument("--postprocess", nargs="*", default=None,
                   help="post-processing step names (default: the chain recorded in the weights' config.json; "
                   "--postprocess alone for raw masks)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def mask_to_image(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices (H, W) -> a viewable image: grey 0/255 (H, W) for two classes, else RGB (H, W, 3) colours."""
    if num_classes <= 2:
        return (mask > 0).astype(np.uint8) * 255
    palette = np.array([CLASS_COLOURS[c % len(CLASS_COLOURS)] for c in range(num_classes)], np.uint8)
    palette[0] = 0
    return palette[mask]


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a grey (H, W) or RGB (H, W, 3) ``uint8`` image as PNG (any path, including non-ASCII)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    buf.tofile(str(path))


def predict_folder(
    segmenter: Segmenter,
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tta: bool = False,
    progress: bool = True,
) -> tuple[list[Path], list[str]]:
    """Segment each image of ``images_dir`` into ``out_dir``.

    Returns:
        The written mask paths, and the names of the files that could not be read as images (skipped, logged).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for sample in tqdm(pairs_from_folders(images_dir), desc="segment", disable=not progress):
        try:
            image = load_image_file(sample.image)
        except ImageInputError as err:
            log.warning("skipping %s: %s", sample.image.name, err)
            skipped.append(sample.image.name)
            continue
        result = segmenter(image, tta=tta)
        mask_path = out / f"{sample.id}_mask.png"
        write_png(mask_path, mask_to_image(result.mask, segmenter.num_classes))
        write_png(out / f"{sample.id}_overlay.png", result.overlay)
        written.append(mask_path)
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1 when no image could be segmented)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    chain = {} if args.postprocess is None else {"postprocess": args.postprocess}
    segmenter = Segmenter.from_pretrained(args.model, device=args.device, threshold=args.threshold, **chain)
    written, skipped = predict_folder(segmenter, args.images, args.out, tta=args.tta, progress=not args.no_progress)
    log.info("wrote %d masks and overlays to %s%s", len(written), args.out,
             f"; skipped {len(skipped)} unreadable files" if skipped else "")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
