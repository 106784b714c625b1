"""What the page draws: the colour key on the overlay image."""

import numpy as np
import pytest

from medseg_core.labels import BKAI_NEOPOLYP, LabelSchema
from medseg_core.visualize import draw_legend

EDD = LabelSchema("multilabel", ("BE", "suspicious", "HGD", "cancer", "polyp"), mask_encoding="per_class_files")
POLYP = LabelSchema("binary", ("background", "polyp"), mask_encoding="binary")


@pytest.mark.parametrize("schema", [POLYP, BKAI_NEOPOLYP, EDD], ids=lambda s: s.task)
@pytest.mark.parametrize("shape", [(288, 384), (1080, 1350), (150, 200), (4000, 6000)])
def test_the_legend_is_drawn_into_a_corner_with_every_class_colour(schema, shape):
    image = np.full((*shape, 3), 128, np.uint8)
    out = draw_legend(image, schema)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 128).all(), "the input is left as it was"
    h, w = shape
    changed = np.argwhere((out != image).any(axis=2))
    assert changed.size, "nothing drawn"
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0) + 1
    assert top > 0 and left > 0 and bottom <= 0.62 * h and right <= 0.62 * w, (top, left, bottom, right)
    box = out[top:bottom, left:right].reshape(-1, 3)
    for name, colour in zip(schema.foreground, schema.foreground_colours):
        assert (box == colour).all(axis=1).sum() >= 4, f"no swatch in {name}'s colour {colour}"
    assert (box.min(axis=1) > 180).sum() >= 10, "no class name (light text)"
    assert np.array_equal(out[bottom:], image[bottom:]) and np.array_equal(out[:, right:], image[:, right:])


def test_multilabel_swatches_are_outlines_like_the_overlay_and_tiny_images_get_none():
    image = np.full((300, 400, 3), 128, np.uint8)
    for schema, hollow in ((EDD, True), (POLYP, False)):
        out = draw_legend(image, schema)
        colour = np.array(schema.foreground_colours[0])
        ys, xs = np.nonzero((out == colour).all(axis=2))
        centre = out[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2]
        assert (not np.array_equal(centre, colour)) == hollow, schema.task
    for tiny in (np.zeros((16, 16, 3), np.uint8), np.zeros((60, 80, 3), np.uint8)):  # too small to read: no key
        assert np.array_equal(draw_legend(tiny, EDD), tiny)
