"""Segment every image in a folder: ``medseg-segment`` with the folder given as ``--images``.

    python -m medseg_core.predict_folder --model weights/unet_lite2.polyp --images DIR --out DIR [--tta]

Writes what :func:`medseg_core.batch.segment_files` writes (``<stem>_mask.png``, ``<stem>_overlay.png``,
``statistics.csv``); the exit status is 1 when no image could be segmented, 2 for a usage error.
"""

from __future__ import annotations

import sys

from .commands import predict_folder as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
