"""A corpus of awkward uploads, written by the tests themselves: case name -> (path, expectation).

The expectation is either ``("ok", (h, w))`` — a correct result of that size (:func:`expected_pixels` says what
some of its pixels must be) — or ``("error", words)`` — a message giving that reason. Files are named neutrally
(``upload_03.png``): a test that matches the reason cannot pass because the words happen to be in the file name.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image


def _photo(h: int = 60, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 3) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = (220, 90, 80)
    return img


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else PIL.Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def build_corpus(folder: Path, huge: bool = True) -> dict[str, tuple[Path, tuple[str, object]]]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    corpus: dict[str, tuple[Path, tuple[str, object]]] = {}

    def add(name: str, data: bytes, expect: tuple[str, object]) -> None:
        path = folder / f"upload_{len(corpus):02d}{Path(name).suffix}"
        path.write_bytes(data)
        corpus[name] = (path, expect)

    add("zero_bytes.png", b"", ("error", "is empty"))
    png = _png_bytes(photo)
    add("truncated.png", png[: len(png) // 2], ("error", "damaged or truncated"))
    jpg = io.BytesIO()
    PIL.Image.fromarray(photo).save(jpg, "JPEG", quality=90)
    add("truncated.jpg", jpg.getvalue()[: len(jpg.getvalue()) // 2], ("error", "damaged or truncated"))
    add("text_renamed.png", b"this is a clinical note, not an image\n" * 20, ("error", "not an image file we can read"))
    add("one_pixel.png", _png_bytes(np.full((1, 1, 3), 128, np.uint8)), ("ok", (1, 1)))
    sixteen = (photo[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    PIL.Image.fromarray(sixteen).save(buf, "PNG")  # mode I;16
    add("sixteen_bit.png", buf.getvalue(), ("ok", (60, 80)))
    add("grey.png", _png_bytes(photo[..., 1]), ("ok", (60, 80)))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    add("rgba.png", _png_bytes(rgba), ("ok", (60, 80)))
    cmyk = io.BytesIO()
    PIL.Image.fromarray(photo).convert("CMYK").save(cmyk, "JPEG")
    add("cmyk.jpg", cmyk.getvalue(), ("ok", (60, 80)))
    gif = io.BytesIO()
    frames = [PIL.Image.fromarray(photo), PIL.Image.fromarray(255 - photo)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    add("animated.gif", gif.getvalue(), ("ok", (60, 80)))
    exif_img = PIL.Image.fromarray(photo)
    exif = exif_img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rotated = io.BytesIO()
    exif_img.save(rotated, "JPEG", exif=exif.tobytes())
    add("exif_rotated.jpg", rotated.getvalue(), ("ok", (80, 60)))
    if huge:
        big = PIL.Image.new("L", (12000, 12000))
        buf = io.BytesIO()
        big.save(buf, "PNG", compress_level=1)
        add("huge_12000.png", buf.getvalue(), ("error", "the limit is 40 MP"))
    return corpus


def expected_pixels(name: str) -> dict[tuple[int, int], tuple[int, int, int]] | None:
    """For an "ok" case: RGB values (within a few levels) that the decoded image must hold at (row, col), or None.

    The size alone would not notice a decoder that returns the right shape with the wrong content (a black frame,
    swapped channels, an unapplied rotation, a clipped 16-bit image)."""
    photo = _photo()
    red = tuple(int(v) for v in photo[20, 30])  # the (220, 90, 80) block
    corner = tuple(int(v) for v in photo[0, 79])
    stretch = 255 / int(photo[..., 0].max())  # 16-bit images are windowed to their own range
    over_black = 200 / 255  # alpha 200 composited over black
    table = {
        "one_pixel.png": {(0, 0): (128, 128, 128)},
        "sixteen_bit.png": {(20, 30): (round(red[0] * stretch),) * 3, (0, 79): (255, 255, 255)},
        "grey.png": {(20, 30): (red[1],) * 3},
        "rgba.png": {(20, 30): tuple(round(v * over_black) for v in red),
                     (0, 79): tuple(round(v * over_black) for v in corner)},
        "cmyk.jpg": {(20, 30): red},
        "animated.gif": {(20, 30): red},
        # EXIF orientation 6: the stored (60, 80) frame is shown rotated 90° clockwise, (r, c) -> (c, 59 - r).
        "exif_rotated.jpg": {(30, 59 - 20): red},
    }
    return table.get(name)
