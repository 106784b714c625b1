"""Pack splits into a small copy of the data folder for a remote training machine (a GPU with a few minutes'
budget, a cluster node without the shared data): images resized to a maximum side and re-encoded as JPEG, masks resized
with nearest-neighbour and stored losslessly as PNG, the split files copied. The copy has the layout
``read_split`` expects, so a recipe trains on it with ``--data.root <out>``.

    python train/pack_data.py --splits polyp-train polyp-val --max-side 384 --out carry/data

Masks keep their encoding (binary grey, palette colours): only their size changes, never their values. Training
on the copy differs from training on the originals only by the resize and the JPEG re-encoding, which the model
card of a run trained on it should state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from tqdm.auto import tqdm

from medseg_core.data import read_split


def _resized(array, max_side: int, interpolation: int):
    h, w = array.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return array
    return cv2.resize(array, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def pack(data_root: Path, splits: list[str], out: Path, max_side: int, quality: int,
         limit: int | None = None) -> tuple[int, int]:
    """Write the packed copy; returns (pairs written, bytes written). A pair named by several splits (a combined
    split file beside its parts) is written and counted once. Per-class mask files (``<stem>_<class>.png``) are
    packed each; ``limit``: only the first pairs of each split (its split file then lists those alone)."""
    (out / "splits").mkdir(parents=True, exist_ok=True)
    written, size = 0, 0
    done: set[str] = set()
    for split in splits:
        listed = read_split(data_root, split)[:limit]
        for sample in tqdm([s for s in listed if s.id not in done], desc=split, unit="pair"):
            masks = (sample.mask,) if isinstance(sample.mask, Path) else sample.mask or ()
            if any(m.suffix == ".csv" for m in masks) or sample.prob is not None:
                raise SystemExit(f"pack_data: {sample.id}: only masks stored as image files can be packed")
            folder, stem = sample.id.split("/", 1)
            image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
            if image is None:
                raise SystemExit(f"pack_data: {sample.id}: image unreadable")
            image_out = out / folder / "images" / f"{stem}.jpg"
            image_out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_out), _resized(image, max_side, cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, quality])
            size += image_out.stat().st_size
            for m in masks:
                mask = cv2.imread(str(m), cv2.IMREAD_UNCHANGED)
                if mask is None:
                    raise SystemExit(f"pack_data: {sample.id}: mask {m.name} unreadable")
                mask_out = out / folder / "masks" / f"{m.stem}.png"
                mask_out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(mask_out), _resized(mask, max_side, cv2.INTER_NEAREST))
                size += mask_out.stat().st_size
            done.add(sample.id)
            written += 1
        split_file = Path(split) if split.endswith(".txt") else data_root / "splits" / f"{split}.txt"
        (out / "splits" / split_file.name).write_text("".join(f"{s.id}\n" for s in listed))
    return written, size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data", help="the data folder (default: ../shared/data)")
    parser.add_argument("--splits", nargs="+", required=True, help="split names (or split files) to pack")
    parser.add_argument("--out", required=True, help="the folder to write (e.g. a git-ignored carry/data)")
    parser.add_argument("--max-side", type=int, default=448,
                        help="longest side after resizing, in pixels (default 448; smaller images are kept)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the images (default 90)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs of each split (smoke runs)")
    args = parser.parse_args(argv)
    if not 32 <= args.max_side <= 4096 or not 50 <= args.quality <= 100:
        parser.error("--max-side must lie in 32..4096 and --quality in 50..100")
    try:
        written, size = pack(Path(args.data_root), args.splits, Path(args.out), args.max_side, args.quality,
                             args.limit)
    except FileNotFoundError as err:
        raise SystemExit(f"pack_data: {err}") from err
    print(f"packed {written} pairs into {args.out}: {size / 2**20:.1f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
