"""TDC-Enhance: the three views' contracts, what each must do to a real endoscopy image, and the command line."""

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES

from medseg_core.data import read_split
from medseg_core.enhance import (
    VIEWS,
    color,
    detail,
    main,
    make_figure,
    specular_mask,
    stack_views,
    tdc_views,
    texture,
)
from medseg_core.io import read_image, read_mask

ENHANCERS = {"texture": texture, "detail": detail, "color": color}


@pytest.fixture(scope="module", params=[p.name for p in EXAMPLES])
def endoscopy(request) -> np.ndarray:
    return read_image(EXAMPLES[0].with_name(request.param))


def _saturated(img: np.ndarray, level: int = 240) -> int:
    """Pixels bright in every channel: specular highlights."""
    return int((img.min(axis=2) >= level).sum())


def _laplacian_energy(img: np.ndarray) -> float:
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def test_views_keep_shape_dtype_and_range():
    rng = np.random.default_rng(0)
    for shape in [(37, 53, 3), (64, 64, 3), (200, 120, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        views = tdc_views(img)
        assert list(views) == list(VIEWS)
        assert np.array_equal(views["original"], img)
        for name, view in views.items():
            assert view.shape == shape and view.dtype == np.uint8, name
            assert view.flags["C_CONTIGUOUS"], name
        assert not np.array_equal(views["texture"], img)


def test_views_are_deterministic(example_image):
    first, second = tdc_views(example_image), tdc_views(example_image.copy())
    for name in VIEWS:
        assert np.array_equal(first[name], second[name]), name


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32), [[0, 0, 0]]])
def test_non_rgb_uint8_input_is_refused(bad):
    for fn in [*ENHANCERS.values(), tdc_views]:
        with pytest.raises(ValueError, match="uint8 RGB"):
            fn(bad)


@pytest.mark.parametrize("name", list(ENHANCERS))
def test_no_wrap_around_on_bright_images(name):
    fn = ENHANCERS[name]
    flat = np.full((64, 64, 3), 250, np.uint8)
    assert fn(flat).min() >= 240, "a near-white image must stay bright"
    # A white square on a light background: sharpening overshoots past 255 along the square's inner edge. Clipped,
    # those pixels stay white; wrapped round in uint8 they would turn nearly black.
    img = np.full((80, 80, 3), 235, np.uint8)
    img[20:64, 20:64] = 255
    out = fn(img)
    assert out[20:64, 20:64].min() >= 250


def test_detail_lowers_specular_highlights(endoscopy):
    before = _saturated(endoscopy)
    assert before > 100, "the example should show highlights"
    assert _saturated(detail(endoscopy)) < 0.5 * before


def test_detail_leaves_a_uniformly_bright_image_uninpainted():
    img = np.full((64, 64, 3), 230, np.uint8)
    assert specular_mask(img).all()  # every pixel looks like a highlight, so it is not a glint
    assert detail(img)[..., 2].min() >= 225  # blue is only sharpened: nothing was filled in


def test_specular_mask_finds_a_glint_not_red_mucosa():
    img = np.zeros((60, 60, 3), np.uint8)
    img[...] = (220, 90, 70)  # bright red mucosa: not specular
    assert not specular_mask(img).any()
    img[28:32, 28:32] = 255
    mask = specular_mask(img, dilate=2)
    assert mask[28:32, 28:32].all() and mask[26, 30] == 255 and not mask[20, 20]


def test_texture_raises_high_frequency_energy(endoscopy):
    assert _laplacian_energy(texture(endoscopy)) > 1.5 * _laplacian_energy(endoscopy)


def test_color_spreads_every_channel_in_the_field_of_view(endoscopy):
    view = color(endoscopy)
    fov = endoscopy.max(axis=2) >= 20  # leave out the endoscope's black frame
    before, after = endoscopy[fov].std(axis=0), view[fov].std(axis=0)
    assert (after > before).all(), (before, after)


def test_stack_views_orders_channels_and_checks_names(example_image):
    small = cv2.resize(example_image, (48, 40))
    views = tdc_views(small)
    stacked = stack_views(small, ["detail", "original"])
    assert stacked.shape == (40, 48, 6) and stacked.dtype == np.uint8
    assert np.array_equal(stacked[..., :3], views["detail"])
    assert np.array_equal(stacked[..., 3:], small)
    with pytest.raises(ValueError, match="unknown view"):
        stack_views(small, ["original", "sharpness"])
    with pytest.raises(ValueError, match="unknown view"):
        stack_views(small, [])


def test_make_figure_lays_out_four_labelled_panels(example_image):
    fig = make_figure(example_image, tile_width=100)
    h, w = example_image.shape[:2]
    assert fig.dtype == np.uint8 and fig.shape == (28 + round(h * 100 / w), 4 * 100 + 3 * 4, 3)
    label_strip = fig[:28, :100]
    assert (label_strip < 128).any() and (label_strip == 255).mean() > 0.5  # dark text on white


def test_figure_command(tmp_path):
    out = tmp_path / "fig" / "views.png"
    assert main(["--figure", str(out), "--image", str(EXAMPLES[0]), "--tile-width", "64"]) == 0
    fig = read_image(out)
    assert fig.shape[1] == 4 * 64 + 3 * 4


def _two_examples(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for src in EXAMPLES[:2]:
        cv2.imwrite(str(images / src.name), cv2.cvtColor(cv2.resize(read_image(src), (96, 72)), cv2.COLOR_RGB2BGR))
        mask = cv2.resize(cv2.imread(str(src.with_name(src.stem + "_mask.png")), cv2.IMREAD_GRAYSCALE), (96, 72),
                          interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(masks / f"{src.stem}_mask.png"), mask)
    return images, masks


def test_enrichment_cli_writes_a_dataset_the_data_layer_reads(tmp_path):
    images, masks = _two_examples(tmp_path)
    out = tmp_path / "enriched_root"
    assert main(["--images", str(images), "--masks", str(masks), "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "enriched" / "images").glob("*.png"))) == 8
    samples = read_split(out, "enriched")
    assert len(samples) == 8
    assert {s.id.rsplit("_", 1)[1] for s in samples} == set(VIEWS)
    for s in samples:
        stem, view = s.image.stem.rsplit("_", 1)
        source = read_image(images / f"{stem}.jpg")
        assert np.array_equal(read_image(s.image), tdc_views(source)[view])  # PNG: lossless
        assert s.mask.read_bytes() == (masks / f"{stem}_mask.png").read_bytes()
        assert read_mask(s.mask).max() == 1


def test_enrichment_cli_on_a_split_with_chosen_views(tmp_path):
    images, masks = _two_examples(tmp_path)
    root = tmp_path / "data"
    (root / "polyps").mkdir(parents=True)
    images.rename(root / "polyps" / "images")
    masks.rename(root / "polyps" / "masks")
    (root / "splits").mkdir()
    (root / "splits" / "tiny.txt").write_text(f"polyps/{EXAMPLES[1].stem}\n")
    out = tmp_path / "out"
    main(["--data-root", str(root), "--split", "tiny", "--out", str(out), "--views", "original", "detail",
          "--no-progress"])
    assert (out / "splits" / "tiny.txt").read_text().split() == [f"polyps/{EXAMPLES[1].stem}_original",
                                                                 f"polyps/{EXAMPLES[1].stem}_detail"]
    assert len(read_split(out, "tiny")) == 2


def test_cli_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "TDC-Enhance" in capsys.readouterr().out
    for argv in [[], ["--out", "x"], ["--figure", "x.png"], ["--data-root", "d", "--out", "x"],
                 ["--images", "i", "--data-root", "d", "--split", "s", "--out", "x"]]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv


def test_enrichment_keeps_per_class_mask_files_of_a_multilabel_dataset(data_root, tmp_path):
    """EDD2020 stores one mask file per class present (<stem>_<class>.png): every view gets all of them."""
    from medseg_core.data import read_sample_mask
    from medseg_core.labels import LabelSchema

    schema = LabelSchema(task="multilabel", class_names=("BE", "suspicious", "HGD", "cancer", "polyp"),
                         mask_encoding="per_class_files")
    source = next(s for s in read_split(data_root, "edd-train") if len(s.mask) >= 2)
    (tmp_path / "one.txt").write_text(source.id + "\n")
    out = tmp_path / "out"
    main(["--data-root", str(data_root), "--split", str(tmp_path / "one.txt"), "--name", "one", "--out", str(out),
          "--views", "original", "color", "--no-progress"])
    enriched = read_split(out, "one")
    assert [s.id for s in enriched] == [f"{source.id}_original", f"{source.id}_color"]
    shape = read_image(source.image).shape[:2]
    truth = read_sample_mask(source, schema, shape)
    for s in enriched:
        assert len(s.mask) == len(source.mask)
        assert np.array_equal(read_sample_mask(s, schema, shape), truth)
