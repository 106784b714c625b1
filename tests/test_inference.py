import json
import shutil

import numpy as np
import pytest
from bad_inputs import build_corpus
from conftest import ROOT

from medseg_core import Segmenter, to_rgb_uint8
from medseg_core.inference import ImageInputError, load_image_file, make_overlay, tta_sizes


@pytest.fixture(scope="module")
def segmenter(tiny_weights):
    return Segmenter.from_pretrained(tiny_weights, device="cpu")


def test_segmenter_on_a_real_image(segmenter, example_image):
    result = segmenter(example_image)
    h, w = example_image.shape[:2]
    assert result.mask.shape == (h, w) and result.mask.dtype == np.uint8
    assert result.probs.shape == (2, h, w) and np.allclose(result.probs.sum(0), 1, atol=1e-5)
    assert result.confidence.shape == (h, w) and result.overlay.shape == example_image.shape
    assert np.array_equal(result.mask, (result.confidence > 0.5).astype(np.uint8))
    s = result.stats
    assert s["lesion_pixels"] == int(result.mask.sum())
    assert s["lesion_percent"] == pytest.approx(100 * result.mask.mean(), abs=1e-3)
    assert s["classes"]["lesion"]["pixels"] == s["lesion_pixels"]
    assert s["model"] == str(segmenter.name) and s["tta"] is False
    assert result.disagreement is None


def test_tta_gives_a_disagreement_map_and_is_flip_equivariant(segmenter, example_image):
    result = segmenter(example_image, tta=True)
    assert result.disagreement is not None and result.disagreement.shape == example_image.shape[:2]
    assert (result.disagreement >= 0).all()
    flipped = segmenter(example_image[:, ::-1].copy(), tta=True)
    assert np.allclose(flipped.confidence[:, ::-1], result.confidence, atol=1e-4)


def test_scale_tta_averages_the_flips_of_each_size(tiny_weights, example_image, tmp_path):
    """Flips at 0.5x and 1x the input size average to the mean of the two single-size TTAs (every resize in between
    is linear); the sizes are reported, a recorded ``tta_scales`` is the default, and without ``tta`` the scales
    change nothing."""
    one, half, both = (Segmenter.from_pretrained(tiny_weights, device="cpu", tta_scales=s)
                       for s in ((1.0,), (0.5,), (0.5, 1.0)))
    assert (one.tta_sizes, half.tta_sizes, both.tta_sizes) == ([64], [32], [32, 64])
    a, b, ab = (s(example_image, tta=True) for s in (one, half, both))
    gap = np.abs(a.confidence - b.confidence).max()  # a random tiny net: small, but far above float error
    assert gap > 1e-5 and np.abs(ab.confidence - (a.confidence + b.confidence) / 2).max() < gap / 100
    assert ab.stats["tta_sizes"] == [32, 64] and both(example_image).stats["tta_sizes"] == []
    assert np.array_equal(both(example_image).probs, one(example_image).probs)
    flipped = both(example_image[:, ::-1].copy(), tta=True)
    assert np.allclose(flipped.confidence[:, ::-1], ab.confidence, atol=1e-4)
    recorded = tmp_path / "recorded"
    shutil.copytree(tiny_weights, recorded)
    config = json.loads((recorded / "config.json").read_text())
    (recorded / "config.json").write_text(json.dumps({**config, "tta_scales": [0.5, 1.0]}))
    assert Segmenter.from_pretrained(recorded, device="cpu").tta_sizes == [32, 64]


@pytest.mark.parametrize(("size", "scales", "sizes"), [
    (352, [0.82, 1.0, 1.18], [288, 352, 416]), (352, [1.0, 1.0], [352]), (64, [0.5, 0.51], [32]),
])
def test_tta_sizes_round_to_the_encoder_stride(size, scales, sizes):
    assert tta_sizes(size, scales) == sizes


@pytest.mark.parametrize("scales", [[], [0.3], [1.0, 2.5]])
def test_tta_scales_out_of_range_are_refused(tiny_weights, scales):
    with pytest.raises(ValueError, match="factors of the input size from 0.5 to 2"):
        Segmenter.from_pretrained(tiny_weights, device="cpu", tta_scales=scales)


def test_postprocessing_is_applied(segmenter, example_image):
    plain = segmenter(example_image)
    cleaned = segmenter(example_image, postprocess=["remove_small_components", "fill_holes"])
    assert cleaned.stats["postprocess"] == ["remove_small_components", "fill_holes"]
    assert cleaned.stats["lesion_count"] <= plain.stats["lesion_count"]


@pytest.mark.parametrize("name", ["unet_lite2.polyp", "unet_lite0.polyp_fast"])
def test_shipped_polyp_models_segment_the_example_polyps(name):
    """The accurate default and the fast video model, from their fp16-stored weights, on the app's examples."""
    weights = ROOT / "weights" / name
    if not (weights / "model.safetensors").is_file():
        pytest.skip("no shipped weights yet")
    from medseg_core.io import read_image, read_mask
    from medseg_core.metrics import dice_score

    seg = Segmenter.from_pretrained(name, device="cpu")
    dices = {}
    for path in sorted((ROOT / "examples").glob("polypgen_*.jpg")):
        truth = read_mask(path.with_name(path.stem + "_mask.png"))
        result = seg(read_image(path))  # with the lesion-present rule recorded in config.json
        assert result.stats["lesion_present"] == bool(result.mask.any()), path.name
        dices[path.name] = dice_score(result.mask, truth)
    # Two examples hold a clear polyp. The third (PolypGen centre 14, a flat polyp under a fold) has always been
    # hard: Dice 0.24 (Lite2) / 0.42 (fast) before the lesion-free fine-tune; now the rule leaves it undrawn
    # (docs/studies/lesion-free-frames.md).
    clear = [d for n, d in dices.items() if not n.startswith("polypgen_14_")]
    assert len(clear) == 2 and min(clear) > 0.9, dices


@pytest.mark.parametrize(
    "array,shape",
    [
        (np.zeros((5, 6), np.uint8), (5, 6, 3)),
        (np.zeros((5, 6, 1), np.uint8), (5, 6, 3)),
        (np.zeros((5, 6, 4), np.uint8), (5, 6, 3)),
        (np.full((5, 6, 3), 65535, np.uint16), (5, 6, 3)),
        (np.ones((5, 6, 3), np.float32), (5, 6, 3)),
        (np.ones((5, 6), bool), (5, 6, 3)),
    ],
)
def test_to_rgb_uint8_layouts(array, shape):
    out = to_rgb_uint8(array)
    assert out.shape == shape and out.dtype == np.uint8
    if array.dtype != np.uint8 and array.max() > 0:
        assert out.max() == 255


def test_to_rgb_uint8_rejects_nonsense():
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((2, 2, 2, 3), np.uint8)):
        with pytest.raises(ValueError):
            to_rgb_uint8(bad)


def test_overlay_marks_only_the_lesion():
    image = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    over = make_overlay(image, mask)
    assert (over[0, 0] == 100).all() and not (over[10, 10] == 100).all()


def test_bad_input_corpus(tmp_path, segmenter):
    for name, (path, (kind, detail)) in build_corpus(tmp_path).items():
        if kind == "error":
            with pytest.raises(ImageInputError, match=detail):
                load_image_file(path)
        else:
            image = load_image_file(path)
            assert image.dtype == np.uint8 and image.shape == (*detail, 3), name
            assert segmenter(image).mask.shape == detail, name


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    corpus = build_corpus(tmp_path, huge=False)
    image = load_image_file(corpus["sixteen_bit.png"][0])
    assert image.max() > 200  # 65535-scale values mapped to 0..255, not clipped to 255 everywhere
    assert len(np.unique(image)) > 10
