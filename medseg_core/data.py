"""Datasets: ``images/`` + ``masks/`` folders, the project's split files, and a user's own folder of pairs.

Images come out as ``uint8`` RGB ``(H, W, 3)``; masks as ``uint8`` class indices ``(H, W)``. OpenCV reads BGR,
so the conversion happens once, here, at the edge.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from .io import IMAGE_EXTENSIONS, read_image, read_mask, rle_rows, rle_stack
from .labels import LabelSchema

__all__ = [
    "MixedBatchSampler",
    "Sample",
    "RepeatFactorSampler",
    "SegDataset",
    "class_repeat_factors",
    "group_split",
    "pairs_from_folders",
    "read_sample_mask",
    "read_split",
    "read_splits",
    "recipe_split",
    "repeat_factors",
]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Sample:
    """One image and its mask on disk; ``id`` is ``<dataset folder>/<file stem>`` as in the split files.

    ``mask`` is one file, several (``per_class_files``: ``<stem>_<class>.png`` for each class present) or the
    dataset's ``masks.csv`` (``rle_csv``, rows keyed by the file stem).

    ``prob`` is an optional coarse lesion-probability map (8-bit grey, 0..255) read as an extra input channel,
    e.g. the training crops of the refiner (``train/make_refiner_data.py``).

    ``meta`` is what the data source knows about the image beyond its pixels, e.g. for a UW-Madison competition
    slice (:func:`read_uwmadison_competition`) its case, day, slice number and pixel spacing; ``meta["rle_id"]``,
    when present, is the row id of the sample in an ``rle_csv`` mask file (else the image's file stem).
    """

    id: str
    image: Path
    mask: Path | tuple[Path, ...] | None
    prob: Path | None = None
    meta: Mapping[str, Any] | None = field(default=None, compare=False)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _find_mask(masks: dict[str, Path], stem: str) -> Path | tuple[Path, ...] | None:
    # Most datasets name the mask like the image; PolypGen adds "_mask"; EDD2020 has <stem>_<class> per class.
    found = masks.get(stem) or masks.get(f"{stem}_mask")
    if found is None:
        per_class = tuple(p for k, p in masks.items() if k.startswith(f"{stem}_"))
        found = per_class or None
    return found


def _mask_index(folder: Path) -> dict[str, Path] | Path:
    """A dataset folder's masks: ``masks/`` files by stem, or its run-length CSV ``masks.csv``."""
    csv_file = folder / "masks.csv"
    return csv_file if csv_file.is_file() and not (folder / "masks").is_dir() else _files_by_stem(folder / "masks")


def read_split(data_root: str | os.PathLike, split: str) -> list[Sample]:
    """The samples of a split file: ``<data_root>/splits/<split>.txt`` or a path to such a file.

    Each line is ``<dataset folder>/<image id>``; images are ``<folder>/images/<id>.*`` and masks
    ``<folder>/masks/<id>.*`` or ``<folder>/masks/<id>_mask.*``. When ``<folder>/probs/`` exists, every image
    needs a ``probs/<id>.png`` lesion-probability map there, which the dataset reads as a fourth channel.
    """
    root = Path(data_root)
    split_file = Path(split) if split.endswith(".txt") else root / "splits" / f"{split}.txt"
    if not split_file.is_file() and is_uwmadison_competition(root):
        # The competition download as published: split by case at the default fraction (``medseg-evaluate --data
        # <competition folder> --split val`` reads the cases a recipe with the default data.val_fraction held out).
        return read_uwmadison_competition(root, split)
    if not split_file.is_file():
        known = sorted(p.stem for p in (root / "splits").glob("*.txt")) if (root / "splits").is_dir() else []
        raise FileNotFoundError(f"no split file {split_file}; known splits: {', '.join(known) or 'none'}")
    lines = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
    index: dict[str, tuple[dict[str, Path], dict[str, Path] | Path, dict[str, Path] | None]] = {}
    samples = []
    for line in lines:
        folder, stem = line.split("/", 1)
        if folder not in index:
            probs_dir = root / folder / "probs"
            index[folder] = (_files_by_stem(root / folder / "images"), _mask_index(root / folder),
                             _files_by_stem(probs_dir) if probs_dir.is_dir() else None)
        images, masks, probs = index[folder]
        if stem not in images:
            raise FileNotFoundError(f"split {split_file.name} names {line}, but there is no such image")
        mask = masks if isinstance(masks, Path) else _find_mask(masks, stem)
        if mask is None:
            raise FileNotFoundError(f"split {split_file.name} names {line}, but it has no mask")
        if probs is not None and stem not in probs:
            raise FileNotFoundError(f"split {split_file.name} names {line}, but it has no probs/ map")
        samples.append(Sample(line, images[stem], mask, probs[stem] if probs is not None else None))
    return samples


def read_splits(data_root: str | os.PathLike, splits: str | Sequence[str]) -> list[Sample]:
    """The samples of one split (:func:`read_split`) or of several, concatenated in the order given (a recipe's
    ``data.val_split: [polyp-val, polyp-negative-val]``)."""
    names = [splits] if isinstance(splits, (str, os.PathLike)) else list(splits)
    return [s for name in names for s in read_split(data_root, os.fspath(name))]


def recipe_split(data: Mapping[str, Any], splits: str | Sequence[str]) -> list[Sample]:
    """The samples of a recipe's split(s), read as its ``data`` section says: ``data.layout: splits`` (the default)
    reads split files under ``data.root`` (:func:`read_splits`); ``uwmgi_competition`` reads the UW-Madison
    competition folder ``data.root`` directly, its cases divided by ``data.val_fraction``
    (:func:`read_uwmadison_competition`)."""
    if data.get("layout", "splits") != "uwmgi_competition":
        return read_splits(data["root"], splits)
    names = [splits] if isinstance(splits, str) else list(splits)
    return [s for name in names
            for s in read_uwmadison_competition(data["root"], name, data.get("val_fraction", UWMGI_VAL_FRACTION))]


def pairs_from_folders(images_dir: str | os.PathLike, masks_dir: str | os.PathLike | None = None) -> list[Sample]:
    """A user's own folder of images, paired by file stem with a folder of masks (``<stem>`` or ``<stem>_mask``).

    Images without a mask are an error when a mask folder is given; without one, masks are None (inference only).
    """
    images = _files_by_stem(Path(images_dir))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
    masks = _files_by_stem(Path(masks_dir)) if masks_dir is not None else None
    samples = []
    for stem, path in images.items():
        if stem.endswith("_mask") and masks is None:
            continue
        mask = _find_mask(masks, stem) if masks is not None else None
        if masks is not None and mask is None:
            raise FileNotFoundError(f"image {path.name} has no mask in {masks_dir}")
        samples.append(Sample(stem, path, mask))
    return samples


def group_split(ids: Sequence[str], groups: Sequence[str] | Callable[[str], str], fractions: Sequence[float],
                seed: int = 0) -> list[list[str]]:
    """Split ids into parts of about ``fractions`` of the groups (patients, video sequences, centres), never putting
    two ids of one group in different parts, so no patient is in both training and test.

    Args:
        ids: the image ids, e.g. ``uwmgi/case101_day20_slice_0078``.
        groups: the group of each id, or a function of the id (e.g. :func:`medseg_core.io.slice_group` on the stem).
        fractions: e.g. ``(0.7, 0.1, 0.2)``; normalised. Groups are shuffled with ``seed`` and dealt out greedily to
            the part furthest below its share of ids, largest groups first.

    Returns:
        One sorted list of ids per fraction.
    """
    group_of = [groups(i) for i in ids] if callable(groups) else list(groups)
    if len(group_of) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(group_of)} groups")
    total = float(sum(fractions))
    if not fractions or total <= 0 or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to more than 0; got {list(fractions)}")
    members: dict[str, list[str]] = {}
    for i, g in zip(ids, group_of):
        members.setdefault(g, []).append(i)
    order = sorted(members)
    np.random.default_rng(seed).shuffle(order)
    order.sort(key=lambda g: -len(members[g]))  # stable: shuffled within equal sizes
    targets = [f / total * len(ids) for f in fractions]
    parts: list[list[str]] = [[] for _ in fractions]
    for g in order:
        k = max(range(len(parts)), key=lambda j: targets[j] - len(parts[j]))
        parts[k].extend(members[g])
    return [sorted(p) for p in parts]


@functools.lru_cache(maxsize=8)
def _rle_rows(csv_file: Path, mtime: float) -> dict[str, list[tuple[str, str]]]:
    return rle_rows(csv_file)


def read_sample_mask(sample: Sample, schema: LabelSchema | None, shape: tuple[int, int],
                     encoding: str | None = None) -> np.ndarray:
    """A sample's ground truth in the schema's layout: class indices (H, W) for binary and multi-class schemas,
    a 0/1 stack (K, H, W) of the foreground classes for multi-label ones. ``shape`` (the image's) sizes the
    classes without a file; ``encoding`` overrides the schema's ``mask_encoding``."""
    encoding = encoding or (schema.mask_encoding if schema is not None else "binary")
    if sample.mask is None:
        raise ValueError(f"{sample.id} has no mask")
    if encoding in ("rle_csv", "per_class_files"):
        if schema is None:
            raise ValueError(f"{encoding} masks need the label schema (which classes, in which order)")
        if encoding == "rle_csv":
            csv_file = Path(sample.mask)
            key = (sample.meta or {}).get("rle_id", sample.image.stem)
            rows = _rle_rows(csv_file, csv_file.stat().st_mtime).get(key, [])
            stack = rle_stack(rows, shape, schema.foreground)
        else:
            files = sample.mask if isinstance(sample.mask, tuple) else (sample.mask,)
            stack = read_mask(files, "per_class_files", schema, shape=shape)
    else:
        index = read_mask(sample.mask, encoding, schema)
        if schema is None or not schema.multilabel:
            return index
        stack = np.stack([index == k + 1 for k in range(len(schema.foreground))]).astype(np.uint8)
    if schema.multilabel:
        return stack
    # A multi-class schema stored per class: one owner per pixel, the higher class index wins.
    index = np.zeros(shape, np.uint8)
    for k, plane in enumerate(stack):
        index[plane > 0] = k + 1
    return index


def _fit_within(img: np.ndarray, max_side: int, interpolation: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=interpolation)


class SegDataset(Dataset):
    """Image/mask pairs through an albumentations transform.

    Args:
        samples: from :func:`read_split` or :func:`pairs_from_folders`.
        transform: an albumentations pipeline ending in ``ToTensorV2`` (see ``medseg_core.transforms``).
        mask_encoding: how mask files encode classes (``medseg_core.io``); ``schema.mask_encoding`` when a schema is
            given.
        schema: the label schema (needed for ``palette``, ``per_class_files`` and ``rle_csv`` masks and for
            multi-label tasks).
        cache_max_side: decode every pair once, shrunk so its longer side is at most this, and keep it in memory.
            Decoding full-size endoscopy JPEGs every epoch costs more than the model on a CPU.
        progress: show a progress bar while caching.

    Items are dicts: ``image`` float (3, H, W), ``mask`` long (H, W) class indices, or (K, H, W) 0/1 for a
    multi-label schema, ``id`` str. Samples with a ``prob`` map get a fourth image channel: the probability in
    [0, 1], moved with the geometric augmentations, never normalised.

    Multi-label masks travel through the augmentation as one bit per class of a single integer mask, so every
    geometric transform moves all classes alike and nearest-neighbour interpolation keeps them exact.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        mask_encoding: str = "binary",
        cache_max_side: int | None = None,
        progress: bool = True,
        schema: LabelSchema | None = None,
    ) -> None:
        if not samples:
            raise ValueError("the dataset is empty")
        self.samples = list(samples)
        self.transform = transform
        self.schema = schema
        self.mask_encoding = schema.mask_encoding if schema is not None else mask_encoding
        if schema is not None and schema.multilabel and len(schema.class_names) > 15:
            raise ValueError("multi-label training supports at most 15 classes")
        if self.mask_encoding in ("per_class_files", "rle_csv") and schema is None:
            raise ValueError(f"{self.mask_encoding} masks need the label schema (which classes, in which order)")
        self.cache_max_side = cache_max_side
        self._cache: list[tuple[np.ndarray, ...]] | None = None
        if cache_max_side is not None:
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                self._cache = list(
                    tqdm(pool.map(self._load, range(len(self.samples))), total=len(self.samples), desc="caching",
                         leave=False, disable=not progress)
                )

    def _load(self, i: int) -> tuple[np.ndarray, ...]:
        s = self.samples[i]
        if s.mask is None:
            raise ValueError(f"{s.id} has no mask")
        image = read_image(s.image)
        mask = self._read_mask(s, image.shape[:2])
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"{s.id}: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        prob = None
        if s.prob is not None:
            prob = cv2.imdecode(np.fromfile(str(s.prob), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
            if prob is None or prob.shape != mask.shape:
                raise ValueError(f"{s.id}: the probability map {s.prob} is unreadable or not the image's size")
        if self.cache_max_side is not None:
            image = _fit_within(image, self.cache_max_side, cv2.INTER_AREA)
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            if prob is not None:
                prob = cv2.resize(prob, image.shape[1::-1], interpolation=cv2.INTER_AREA)
        return (image, mask) if prob is None else (image, mask, prob)

    def _read_mask(self, s: Sample, shape: tuple[int, int]) -> np.ndarray:
        """Class indices (H, W); for multi-label schemas the classes packed as bits (bit k = class k), uint16."""
        mask = read_sample_mask(s, self.schema, shape, self.mask_encoding)
        if mask.ndim == 3:
            return (mask.astype(np.uint16) << np.arange(len(mask), dtype=np.uint16)[:, None, None]).sum(
                0).astype(np.uint16)
        return mask

    def class_presence(self) -> np.ndarray:
        """(N, K) bool: which foreground classes each sample's mask holds (K = classes - 1; for a multi-label schema
        K = every class; without a schema, K = the largest class index found). Read from the cache when there is one
        (masks downsized with nearest neighbour, where a region of a pixel or two can vanish), otherwise from the
        files."""
        masks = [self._mask(i) for i in range(len(self))]
        if self.schema is not None:
            num = len(self.schema.class_names)
        else:
            num = max((int(m.max(initial=0)) for m in masks), default=0) + 1
        multilabel = self.schema is not None and self.schema.multilabel
        presence = np.zeros((len(self), num if multilabel else num - 1), bool)
        for i, mask in enumerate(masks):
            if multilabel:
                presence[i] = [(mask >> k & 1).any() for k in range(num)]
            else:
                present = np.unique(mask)
                present = present[(present > 0) & (present < num)]
                presence[i, present - 1] = True
        return presence

    def _mask(self, i: int) -> np.ndarray:
        return self._cache[i][1] if self._cache is not None else self._load(i)[1]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        image, mask, *prob = self._cache[i] if self._cache is not None else self._load(i)
        if self.transform is not None:
            # The probability map rides along as an extra mask: geometric transforms only, no normalisation.
            out = self.transform(image=image, mask=mask, **({"masks": prob} if prob else {}))
            image, mask, prob = out["image"], out["mask"], out.get("masks", [])
        else:
            image = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            mask = torch.from_numpy(mask)
            prob = [torch.from_numpy(p) for p in prob]
        if prob:
            image = torch.cat([image, torch.as_tensor(prob[0]).float()[None] / 255.0])
        mask = torch.as_tensor(np.asarray(mask).astype(np.int64))
        if self.schema is not None and self.schema.multilabel:  # unpack the class bits: (K, H, W) 0/1
            bits = torch.arange(len(self.schema.class_names))
            mask = (mask[None] >> bits[:, None, None]) & 1
        return {"image": image, "mask": mask.long(), "id": self.samples[i].id}


def class_repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """Repeat-factor sampling's per-class factors (Gupta et al., LVIS, CVPR 2019): for class ``c`` present in a
    fraction ``f_c`` of the images, ``r_c = max(1, sqrt(threshold / f_c))`` (1 for a class no image holds).
    Classes in at least ``threshold`` of the images are not oversampled; rarer ones are, by the square root of how
    much rarer.

    Args:
        presence: (N, K) bool, from :meth:`SegDataset.class_presence`.
        threshold: ``t`` in (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the repeat-factor threshold must be in (0, 1]; got {threshold}")
    freq = np.asarray(presence, bool).mean(0)
    return np.where(freq > 0, np.sqrt(threshold / np.maximum(freq, 1e-12)), 1.0).clip(min=1.0)


def repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """Each image's repeat factor under repeat-factor sampling: the largest :func:`class_repeat_factors` factor of
    the classes it holds (1 when it holds none). :class:`RepeatFactorSampler` draws by it."""
    presence = np.asarray(presence, bool)
    return np.where(presence, class_repeat_factors(presence, threshold)[None], 1.0).max(1, initial=1.0)


class RepeatFactorSampler(Sampler[int]):
    """An epoch of ``num_samples`` indices (default: the dataset's length, so the budget stays that of a plain
    shuffled epoch) in which image ``i`` appears about ``num_samples * factors[i] / sum(factors)`` times.

    As in LVIS (Gupta et al., CVPR 2019) the counts are rounded stochastically (``floor`` plus one with the
    probability of the fraction) and the list is shuffled, so an image is drawn without replacement as far as its
    count allows: with all factors equal this is a plain permutation of the dataset. Unlike LVIS the epoch is not
    lengthened by the factors: they are rescaled to ``num_samples``, and a rounding surplus or shortfall is cut off
    or topped up by draws in proportion to the factors. ``generator`` is a ``torch.Generator`` (set by Accelerate to
    keep processes in step), else one seeded from torch's global generator each epoch, as ``RandomSampler`` does.
    """

    def __init__(self, factors: Sequence[float] | np.ndarray, num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        self.factors = torch.as_tensor(np.asarray(factors, dtype=np.float64))
        if self.factors.ndim != 1 or not len(self.factors) or (self.factors <= 0).any():
            raise ValueError("repeat factors must be a non-empty list of positive numbers")
        self.num_samples = len(self.factors) if num_samples is None else int(num_samples)
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = self.generator
        if g is None:
            g = torch.Generator()
            g.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        expected = self.factors * self.num_samples / self.factors.sum()
        counts = expected.floor() + (torch.rand(len(expected), generator=g, dtype=torch.float64)
                                     < expected - expected.floor())
        order = torch.repeat_interleave(torch.arange(len(counts)), counts.long())
        order = order[torch.randperm(len(order), generator=g)][: self.num_samples]
        if len(order) < self.num_samples:
            extra = torch.multinomial(self.factors, self.num_samples - len(order), replacement=True, generator=g)
            order = torch.cat([order, extra])[torch.randperm(self.num_samples, generator=g)]
        yield from order.tolist()


class MixedBatchSampler(Sampler[list[int]]):
    """Batches in which each extra pool of samples has a fixed share: a recipe's ``data.mix_splits``, e.g. 25 % of
    every batch drawn from lesion-free frames, the rest from the main training split.

    Indices ``0 .. main_size - 1`` are the main split; each following pool of ``pool_sizes[j]`` indices is extra
    split ``j``. Each batch takes ``shares[j] * batch_size`` samples of pool ``j`` (rounded stochastically, so the
    share holds on average when it is not a whole number of samples) and fills the rest from the main split. The
    main split is drawn without replacement, once per epoch: an epoch is as many batches as it takes to show every
    main sample once (the last partial batch dropped), and the extra pools are drawn without replacement too,
    reshuffled whenever one runs out. ``generator`` as in :class:`RepeatFactorSampler`.
    """

    def __init__(self, main_size: int, pool_sizes: Sequence[int], shares: Sequence[float], batch_size: int,
                 generator: torch.Generator | None = None) -> None:
        if main_size < 1 or len(pool_sizes) != len(shares) or any(n < 1 for n in pool_sizes):
            raise ValueError("a mixed batch needs a non-empty main split and one share per non-empty extra pool")
        if any(not 0 < f < 1 for f in shares) or sum(shares) >= 1:
            raise ValueError(f"the extra splits' shares must each be between 0 and 1 and sum below 1; got "
                             f"{list(shares)}")
        self.main_size, self.pool_sizes, self.shares = main_size, list(pool_sizes), [float(f) for f in shares]
        self.batch_size, self.generator = int(batch_size), generator
        extra = self.batch_size * sum(self.shares)
        self.num_batches = max(1, int(main_size // max(1.0, self.batch_size - extra)))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = self.generator
        if g is None:
            g = torch.Generator()
            g.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        offsets = np.cumsum([self.main_size, *self.pool_sizes])[:-1].tolist()
        queues: list[list[int]] = [[] for _ in self.pool_sizes]
        main = torch.randperm(self.main_size, generator=g).tolist()
        for _ in range(self.num_batches):
            batch = []
            for j, (n, share, offset) in enumerate(zip(self.pool_sizes, self.shares, offsets)):
                want = self.batch_size * share
                count = int(want) + int(torch.rand((), generator=g, dtype=torch.float64).item() < want - int(want))
                for _ in range(count):
                    if not queues[j]:
                        queues[j] = torch.randperm(n, generator=g).tolist()
                    batch.append(offset + queues[j].pop())
            while len(batch) < self.batch_size:
                if not main:
                    main = torch.randperm(self.main_size, generator=g).tolist()
                batch.append(main.pop())
            yield batch


# UW-Madison GI tract MRI (Kaggle 2022): RLE masks of three organs in a CSV.

#: The competition's organ classes, in mask-index order (1, 2, 3); 0 is background.
UWMADISON_CLASSES: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")


def uwmadison_slice_info(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
    """The CSV id and the (height, width) of a competition slice file.

    ``.../case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png`` -> ``("case123_day20_slice_0001",
    (266, 266))``: the file name gives width, height and the pixel spacing, the parent of ``scans`` the case-day.
    """
    p = Path(path)
    parts = p.stem.split("_")
    if len(parts) != 6 or parts[0] != "slice":
        raise ValueError(f"{p.name} is not named slice_<n>_<width>_<height>_<dx>_<dy>")
    width, height = int(parts[2]), int(parts[3])
    return f"{p.parent.parent.name}_slice_{parts[1]}", (height, width)


def read_uwmadison_csv(
    csv_path: str | os.PathLike,
    shapes: tuple[int, int] | dict[str, tuple[int, int]],
    classes: Sequence[str] = UWMADISON_CLASSES,
) -> dict[str, np.ndarray]:
    """Per-slice multi-class masks from a UW-Madison ``train.csv`` (columns ``id``, ``class``, ``segmentation``).

    Args:
        csv_path: the CSV; an empty ``segmentation`` means the organ is absent from that slice.
        shapes: the (height, width) of every slice, or a dict id -> (height, width) (see
            :func:`uwmadison_slice_info`; the CSV itself does not record sizes).
        classes: the organ names in mask-index order; class ``classes[k]`` becomes index ``k + 1``.

    Returns:
        id -> ``uint8`` mask (H, W): 0 background, 1/2/3 large bowel / small bowel / stomach. Every id in the CSV
        is returned, slices without any organ as all-background masks.

    Organs may overlap in the annotations (bowel loops touching). A single-label mask needs one owner per pixel:
    the higher class index wins (stomach over small bowel over large bowel). Keep per-organ masks from
    :func:`rle_decode` where a multi-label target is wanted.
    """
    from .io import read_rle_csv

    masks = {}
    for sid, stack in read_rle_csv(csv_path, shapes, classes).items():
        index = np.zeros(stack.shape[1:], np.uint8)
        for k, plane in enumerate(stack):  # paint in class order, so the higher index wins
            index[plane > 0] = k + 1
        masks[sid] = index
    return masks


__all__ += ["UWMADISON_CLASSES", "read_uwmadison_csv", "uwmadison_slice_info"]


# The competition download as published: train.csv beside train/case<N>/case<N>_day<D>/scans/slice_*.png.

#: About this share of the competition's slices, in whole cases, is held out as the ``val`` split unless a recipe's
#: ``data.val_fraction`` says otherwise.
UWMGI_VAL_FRACTION = 0.2


def uwmadison_slice_meta(path: str | os.PathLike) -> dict[str, Any]:
    """What the path of a competition slice says about it.

    ``train/case123/case123_day20/scans/slice_0065_266_310_1.50_1.50.png`` -> ``{"rle_id":
    "case123_day20_slice_0065", "case": "case123", "day": "day20", "slice": 65, "width": 266, "height": 310,
    "spacing": (1.5, 1.5)}``: the file name is ``slice_<n>_<width>_<height>_<spacing x>_<spacing y>`` (the pixel
    spacing in mm, across and down), the folder two above it ``case<N>_day<D>``, and ``rle_id`` the row id of
    the slice in ``train.csv``. Raises ``ValueError`` for any other name.
    """
    p = Path(path)
    parts, case_day = p.stem.split("_"), p.parent.parent.name
    try:
        if len(parts) != 6 or parts[0] != "slice":
            raise ValueError
        number, width, height = int(parts[1]), int(parts[2]), int(parts[3])
        spacing = (float(parts[4]), float(parts[5]))
    except ValueError:
        raise ValueError(f"{p.name} is not named slice_<n>_<width>_<height>_<spacing>_<spacing>") from None
    case, _, day = case_day.partition("_")
    if not (case.startswith("case") and case[4:].isdigit() and day.startswith("day") and day[3:].isdigit()):
        raise ValueError(f"{p} is not in a case<N>_day<D>/scans/ folder")
    return {"rle_id": f"{case_day}_slice_{parts[1]}", "case": case, "day": day, "slice": number, "width": width,
            "height": height, "spacing": spacing}


def is_uwmadison_competition(root: str | os.PathLike) -> bool:
    """Whether ``root`` looks like the competition folder: ``train.csv`` beside a ``train/`` folder."""
    return (Path(root) / "train.csv").is_file() and (Path(root) / "train").is_dir()


@functools.lru_cache(maxsize=4)
def _uwmadison_index(root: Path, csv_mtime: float) -> tuple[tuple[str, Path, tuple[tuple[str, Any], ...]], ...]:
    """``(rle_id, image, meta)`` for every slice ``train.csv`` names, sorted by id; a slice it names without an
    image is an error, an image it does not name is left out (with a warning)."""
    from .config import DataLayoutError

    csv_file, scans = root / "train.csv", root / "train"
    try:
        rows = _rle_rows(csv_file, csv_mtime)
    except ValueError as err:  # a CSV without the competition's columns, or not text at all
        raise DataLayoutError(f"{csv_file}: {err}") from err
    if not rows:
        raise DataLayoutError(f"{csv_file} lists no slices")
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(scans.glob("case*/case*_day*/scans/slice_*.png")):
        try:
            meta = uwmadison_slice_meta(path)
        except ValueError as err:
            raise DataLayoutError(f"{scans}: {err}") from err
        found[meta["rle_id"]] = (path, meta)
    missing = [sid for sid in rows if sid not in found]
    if missing:
        raise DataLayoutError(f"{csv_file} names {len(missing)} slice(s) with no image under {scans} (e.g. "
                              f"{missing[0]}); is the download complete?")
    extra = len(found) - len(rows)
    if extra:
        log.warning("%d slice image(s) under %s have no row in train.csv and are left out", extra, scans)
    return tuple((sid, found[sid][0], tuple(found[sid][1].items())) for sid in sorted(rows))


def read_uwmadison_competition(root: str | os.PathLike, split: str = "all",
                               val_fraction: float = UWMGI_VAL_FRACTION) -> list[Sample]:
    """The UW-Madison GI Tract competition folder as published, read as it is: ``train.csv`` (``id``, ``class``,
    ``segmentation``: run-lengths of large bowel, small bowel and stomach, organs that may overlap) beside
    ``train/case<N>/case<N>_day<D>/scans/slice_<n>_<w>_<h>_<spacing>_<spacing>.png`` (16-bit grey).

    Args:
        root: the folder holding ``train.csv`` and ``train/``.
        split: ``all`` the slices; ``train`` or ``val``, the slices of the cases (patients, with all their days)
            :func:`group_split` deals to each part: about ``val_fraction`` of the slices go to ``val``, never a case
            in both. Deterministic: the same folder and fraction give the same split.
        val_fraction: the share held out as ``val``, in (0, 1).

    Returns:
        Samples sorted by id, the competition's slice id (``case123_day20_slice_0065``), whose ``mask`` is
        ``train.csv`` (the ``rle_csv`` encoding, read with ``meta["rle_id"]``) and whose ``meta`` holds the case,
        day, slice number, size and pixel spacing (:func:`uwmadison_slice_meta`). Images are read like every other
        (:func:`medseg_core.io.read_image`: the 16-bit slice windowed per image, 0.5th to 99.5th percentile to 0..255,
        as three equal channels).

    Raises:
        medseg_core.config.DataLayoutError: no ``train.csv`` or ``train/`` folder, slices named without an image, an
            unknown split name, or a fraction that leaves a part without any case.
    """
    from .config import UWMGI_SPLITS, DataLayoutError

    root = Path(root)
    if split not in UWMGI_SPLITS:
        raise DataLayoutError(f"the UW-Madison competition folder {root} has the splits {', '.join(UWMGI_SPLITS)}; "
                              f"got {split!r}")
    if not (root / "train.csv").is_file():
        raise DataLayoutError(f"{root} holds no train.csv: give the UW-Madison GI Tract competition folder, "
                              "train.csv beside train/ (docs/how-to/uw-madison.md)")
    if not (root / "train").is_dir():
        raise DataLayoutError(f"{root} holds train.csv but no train/ folder of slices "
                              "(train/case<N>/case<N>_day<D>/scans/slice_*.png)")
    if isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        raise DataLayoutError(f"the val fraction must be between 0 and 1 (exclusive); got {val_fraction!r}")
    index = _uwmadison_index(root, (root / "train.csv").stat().st_mtime)
    metas = {sid: dict(meta) for sid, _, meta in index}
    chosen = set(metas)
    if split != "all":
        ids = list(metas)
        parts = dict(zip(("train", "val"), group_split(ids, [metas[i]["case"] for i in ids],
                                                       (1 - val_fraction, val_fraction))))
        if not parts["train"] or not parts["val"]:
            cases = len({m["case"] for m in metas.values()})
            raise DataLayoutError(f"a val fraction of {val_fraction:g} of {cases} case(s) leaves the "
                                  f"{'train' if not parts['train'] else 'val'} split without a case")
        chosen = set(parts[split])
    return [Sample(sid, image, root / "train.csv", meta=metas[sid]) for sid, image, _ in index if sid in chosen]


__all__ += ["UWMGI_VAL_FRACTION", "is_uwmadison_competition", "read_uwmadison_competition", "uwmadison_slice_meta"]
