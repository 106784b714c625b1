"""Segment every image in a folder: ``medseg-segment`` with the folder given as ``--images``.

    python -m medseg_core.predict_folder --model weights/unet_lite2.polyp --images DIR --out DIR [--tta]

Writes what :func:`medseg_core.batch.segment_files` writes (``<stem>_mask.png``, ``<stem>_overlay.png``,
``statistics.csv``); the exit status is 1 when no image could be segmented.
"""

from __future__ import annotations

import sys

from .batch import build_parser
from .batch import main as segment_main

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    return segment_main(argv, build_parser("python -m medseg_core.predict_folder", folder_flag=True))


if __name__ == "__main__":
    sys.exit(main())
