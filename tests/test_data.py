import numpy as np
import pytest
import torch

from medseg_core.data import (
    RepeatFactorSampler,
    SegDataset,
    class_repeat_factors,
    pairs_from_folders,
    read_sample_mask,
    read_split,
    repeat_factors,
)
from medseg_core.io import decode_mask, read_image, read_mask
from medseg_core.labels import BKAI_NEOPOLYP
from medseg_core.transforms import eval_transform, train_transform


def test_split_sizes_and_pairing(data_root):
    sizes = {"polyp-train": 1305, "polyp-val": 145, "test-kvasir": 100, "test-clinicdb": 62, "test-polypgen": 150}
    for name, n in sizes.items():
        samples = read_split(data_root, name)
        assert len(samples) == n
        assert len({s.id for s in samples}) == n
    gen = read_split(data_root, "test-polypgen")[0]
    assert gen.mask.name == f"{gen.image.stem}_mask.jpg"  # PolypGen adds _mask
    train_ids = {s.id for s in read_split(data_root, "polyp-train")}
    for test in ("test-kvasir", "test-clinicdb", "polyp-val"):
        assert not train_ids & {s.id for s in read_split(data_root, test)}


def test_unknown_split_names_the_known_ones(data_root):
    with pytest.raises(FileNotFoundError, match="test-kvasir"):
        read_split(data_root, "test-kvasirr")


def test_real_masks_decode_to_binary(data_root):
    for split in ("test-kvasir", "test-clinicdb", "test-polypgen"):
        s = read_split(data_root, split)[1]
        image, mask = read_image(s.image), read_mask(s.mask)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 1}
        assert 0 < mask.mean() < 1


def test_decode_neopolyp_colours():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (200, 30, 20)  # red: neoplastic
    rgb[0, 1] = (20, 210, 40)  # green: non-neoplastic
    rgb[0, 2] = (30, 30, 30)  # near black
    assert decode_mask(rgb, "palette", BKAI_NEOPOLYP).tolist() == [[1, 2, 0], [0, 0, 0]]
    assert decode_mask(rgb, "binary").tolist() == [[1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="not single images"):
        decode_mask(rgb, "rle_csv")


def test_dataset_items_and_cache(data_root):
    samples = read_split(data_root, "test-kvasir")[:3]
    ds = SegDataset(samples, train_transform(64, (0.5,) * 3, (0.5,) * 3), cache_max_side=96)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.long
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    assert item["id"] == samples[0].id
    plain = SegDataset(samples, eval_transform(64, (0.5,) * 3, (0.5,) * 3))
    cached = SegDataset(samples, eval_transform(64, (0.5,) * 3, (0.5,) * 3), cache_max_side=2000)
    assert torch.equal(plain[1]["mask"], cached[1]["mask"])


def test_augmentation_keeps_masks_binary_and_aligned():
    image = np.zeros((80, 80, 3), np.uint8)
    image[20:60, 20:60] = 255
    mask = (image[..., 0] > 0).astype(np.uint8)
    t = train_transform(64, (0.0,) * 3, (1.0,) * 3)
    for seed in range(10):
        import random

        random.seed(seed)
        np.random.seed(seed)
        out = t(image=image, mask=mask)
        m = out["mask"].numpy()
        assert set(np.unique(m)) <= {0, 1}
        bright = out["image"][0].numpy() > 0.5
        if m.sum() > 50:  # geometric transforms move image and mask together
            assert (bright & (m > 0)).sum() / m.sum() > 0.6


def test_colour_augmentation_ranges_scale_with_the_colour_factor():
    """``colour`` scales the colour jitter and gamma ranges; 0 turns them off and leaves the geometry alone."""
    import albumentations as A

    def colour_steps(colour):
        t = train_transform(64, (0.0,) * 3, (1.0,) * 3, colour=colour)
        return {type(s).__name__: s for s in t.transforms if isinstance(s, (A.ColorJitter, A.RandomGamma))}

    default, double, off = colour_steps(1.0), colour_steps(2.0), colour_steps(0.0)
    assert default["ColorJitter"].brightness == pytest.approx((0.8, 1.2))
    assert double["ColorJitter"].brightness == pytest.approx((0.6, 1.4))
    assert double["ColorJitter"].hue == pytest.approx((-0.04, 0.04))
    assert tuple(double["RandomGamma"].gamma_limit) == (60, 140)
    assert tuple(default["RandomGamma"].gamma_limit) == (80, 120)
    assert off["ColorJitter"].p == 0 and off["RandomGamma"].p == 0 and default["ColorJitter"].p == 0.6
    image = np.full((64, 64, 3), 120, np.uint8)
    out = train_transform(64, (0.0,) * 3, (1.0,) * 3, strength=0.0, colour=2.0)(image=image, mask=image[..., 0] * 0)
    assert np.allclose(out["image"].numpy(), 120 / 255)  # strength 0: no augmentation at all, whatever the colour


def test_lesion_free_crops_hold_no_lesion_and_keep_image_and_masks_aligned():
    import albumentations as A

    from medseg_core.transforms import LesionFreeCrop

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 180, 3), dtype=np.uint8)
    mask = np.zeros((120, 180), np.uint8)
    mask[30:90, 60:120] = 1
    crop = A.Compose([LesionFreeCrop(p=1.0)], seed=0)
    cropped = 0
    for _ in range(40):
        out = crop(image=image, mask=mask, masks=[mask * 255])
        if out["image"].shape == image.shape:  # no lesion-free square found this time: left as it is
            assert np.array_equal(out["mask"], mask)
            continue
        cropped += 1
        h, w = out["mask"].shape
        assert h == w and out["image"].shape[:2] == (h, w) and not out["mask"].any() and not out["masks"][0].any()
        # the crop is a window of the original image
        ys, xs = np.nonzero((image[..., 0] == out["image"][0, 0, 0]) & (image[..., 1] == out["image"][0, 0, 1]))
        assert any(np.array_equal(image[y:y + h, x:x + w], out["image"]) for y, x in zip(ys, xs))
    assert cropped > 10
    full = np.ones((50, 50), np.uint8)  # all lesion: never cropped
    assert crop(image=image[:50, :50], mask=full)["image"].shape == (50, 50, 3)
    in_pipeline = train_transform(64, (0.5,) * 3, (0.5,) * 3, negative_crops=0.5)
    assert isinstance(in_pipeline.transforms[0], LesionFreeCrop) and in_pipeline.transforms[0].p == 0.5
    assert not any(isinstance(t, LesionFreeCrop) for t in train_transform(64, (0.5,) * 3, (0.5,) * 3).transforms)


def test_repeat_factors_oversample_images_of_the_rarer_class():
    # Class 1 in 3 of 4 images, class 2 in 1 of 4, one image with no lesion.
    presence = np.array([[1, 0], [1, 1], [1, 0], [0, 0]], bool)
    r = repeat_factors(presence, 0.75)
    assert r[0] == r[2] == r[3] == 1.0  # class 1 is at the threshold: not oversampled; no lesion: 1
    assert r[1] == pytest.approx(np.sqrt(0.75 / 0.25))  # the image holding the rare class takes its factor
    assert class_repeat_factors(presence, 0.75) == pytest.approx([1.0, np.sqrt(3.0)])
    assert (repeat_factors(presence, 0.2) == 1.0).all()  # both classes above the threshold
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(presence, 0.0)


def test_class_presence_reads_every_foreground_class(data_root):
    samples = read_split(data_root, "neopolyp-train")[:8]
    presence = SegDataset(samples, schema=BKAI_NEOPOLYP, progress=False).class_presence()
    expected = [[bool((m == 1).any()), bool((m == 2).any())]
                for m in (read_sample_mask(s, BKAI_NEOPOLYP, read_image(s.image).shape[:2]) for s in samples)]
    assert presence.tolist() == expected and presence.any(0).all()  # both classes occur in these eight


def test_user_folder_pairs(tmp_path):
    import cv2

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(tmp_path / "img" / f"{stem}.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "msk" / "a.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "msk" / "b_mask.png"), np.full((8, 8), 255, np.uint8))
    pairs = pairs_from_folders(tmp_path / "img", tmp_path / "msk")
    assert [(p.id, p.mask.name) for p in pairs] == [("a", "a.png"), ("b", "b_mask.png")]
    assert read_mask(pairs[1].mask).all()
    # Without a schema the classes come from every mask, not the first (here empty) one.
    assert SegDataset(pairs, progress=False).class_presence().tolist() == [[False], [True]]
    (tmp_path / "img" / "c.png").write_bytes((tmp_path / "img" / "a.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="c.png"):
        pairs_from_folders(tmp_path / "img", tmp_path / "msk")
    assert [p.mask for p in pairs_from_folders(tmp_path / "img")] == [None, None, None]


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        read_image(bad)


def test_repeat_factor_sampler_keeps_the_epoch_length_and_draws_without_replacement_where_it_can():
    g = torch.Generator().manual_seed(0)
    assert sorted(RepeatFactorSampler([1.0] * 10, generator=g)) == list(range(10))  # equal factors: a permutation
    factors = np.array([1.0] * 8 + [3.0] * 2)  # two images three times as likely
    sampler = RepeatFactorSampler(factors, generator=g)
    epochs = [list(sampler) for _ in range(400)]
    assert all(len(e) == len(sampler) == 10 for e in epochs)
    counts = np.bincount(np.concatenate(epochs), minlength=10) / len(epochs)
    np.testing.assert_allclose(counts, 10 * factors / factors.sum(), atol=0.05)  # 0.71 and 2.14 per epoch
    # Stochastic rounding: the likelier image comes 2 or 3 times an epoch (2.14 on average), almost never otherwise
    # and never 0; drawn with replacement it would come 2 or 3 times in only about half the epochs.
    per_epoch = np.array([e.count(9) for e in epochs])
    assert per_epoch.min() >= 1 and np.isin(per_epoch, (2, 3)).mean() > 0.9
    with pytest.raises(ValueError, match="positive"):
        RepeatFactorSampler([1.0, 0.0])
