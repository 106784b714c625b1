import numpy as np
import pytest
import torch

from medseg_core.data import SegDataset, pairs_from_folders, read_split
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
    (tmp_path / "img" / "c.png").write_bytes((tmp_path / "img" / "a.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="c.png"):
        pairs_from_folders(tmp_path / "img", tmp_path / "msk")
    assert [p.mask for p in pairs_from_folders(tmp_path / "img")] == [None, None, None]


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        read_image(bad)
