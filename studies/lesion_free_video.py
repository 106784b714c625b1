"""False-alarm events on a lesion-free clip, with and without temporal smoothing.

    python studies/lesion_free_video.py --model unet_lite0.polyp_fast --split polyp-negative-test \
        --sequence CB_seq11 --fps 5 --smoothing 0 0.5 0.8 --out runs/lesion_free_video

Builds a clip from the frames of one whole sequence of a lesion-free split (in frame order, at ``--fps``; the
PolypGen negative sequences are thinned, so the clip's time base is the one given here, not the procedure's),
segments it through ``medseg_core.video.segment_video`` at each smoothing weight, and prints, per weight, the frames
with a lesion drawn, the lesion events and the false-alarm events per minute. The clip and one JSON per run go to
``--out``. See docs/studies/lesion-free-frames.md.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np


def sequence_frames(data_root: str, split: str, sequence: str, side: int = 512) -> list[np.ndarray]:
    """The frames of one sequence of a split (ids ``<folder>/<sequence>_img<N>``), in frame order, each resized to
    ``side`` x ``side * 3/4``-ish (even sides, the largest frame's aspect) so that they share one clip size."""
    from medseg_core.data import read_split
    from medseg_core.io import read_image

    samples = [s for s in read_split(data_root, split) if s.id.split("/", 1)[1].startswith(f"{sequence}_img")]
    if not samples:
        raise SystemExit(f"no frames of {sequence} in {split}")
    samples.sort(key=lambda s: int(re.search(r"_img(\d+)$", s.id).group(1)))
    images = [read_image(s.image) for s in samples]
    h, w = images[0].shape[:2]
    size = (side, round(side * h / w / 2) * 2) if w >= h else (round(side * w / h / 2) * 2, side)
    return [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--split", default="polyp-negative-test")
    p.add_argument("--sequence", required=True, help="e.g. CB_seq11 (the id prefix before _img)")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    p.add_argument("--presence", choices=["recorded", "none"], default="recorded")
    p.add_argument("--out", default="runs/lesion_free_video")
    args = p.parse_args()

    from medseg_core.cli import setup_logging
    from medseg_core.inference import Segmenter
    from medseg_core.video import encode_video, segment_video

    setup_logging()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = out / f"{args.sequence}.mp4"
    frames = sequence_frames(args.data, args.split, args.sequence)
    encode_video(frames, clip, fps=args.fps)
    segmenter = Segmenter.from_pretrained(args.model, device="cpu", apply_presence=args.presence)
    name = Path(args.model).name
    print(f"{name} on {args.sequence} of {args.split}: {len(frames)} frames at {args.fps:g} fps "
          f"({len(frames) / args.fps:.1f} s), presence rule {args.presence}")
    print("| smoothing | frames with a lesion | lesion events | false-alarm events per minute |")
    print("|---|---|---|---|")
    for weight in args.smoothing:
        tag = f"{name}_{args.sequence}_s{weight:g}_{args.presence}"
        summary = segment_video(segmenter, clip, out / f"{tag}.mp4", out / f"{tag}.csv", smoothing=weight)
        (out / f"{tag}.json").write_text(json.dumps({**asdict(summary), "model": name, "split": args.split,
                                                     "sequence": args.sequence, "presence": args.presence}, indent=2))
        print(f"| {weight:g} | {summary.frames_with_lesion} of {summary.frames} | {len(summary.events)} | "
              f"{summary.events_per_minute:.1f} |")


if __name__ == "__main__":
    main()
