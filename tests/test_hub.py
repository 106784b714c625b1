"""Weights from a local folder, ``weights/``, or a Hub repo id resolved offline from the huggingface_hub cache."""

import shutil

import pytest
import torch

from medseg_core import WeightsNotFoundError, create_model, list_local_weights, load_model, resolve_weights
from medseg_core.models import get_model_class

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path, tiny_weights):
    """A huggingface_hub cache holding repo medseg/tiny-unet, laid out as snapshot_download leaves it."""
    repo = tmp_path / "models--medseg--tiny-unet"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_weights / f, snapshot / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path


def test_repo_id_resolves_from_the_cache_offline(hub_cache, tiny_weights):
    folder = resolve_weights("medseg/tiny-unet", cache_dir=hub_cache)
    assert folder.name == COMMIT
    model = load_model("medseg/tiny-unet", cache_dir=str(hub_cache))
    reference = load_model(tiny_weights)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_mixin_from_pretrained_reads_the_cache(hub_cache):
    model = get_model_class("unet").from_pretrained("medseg/tiny-unet", cache_dir=hub_cache, local_files_only=True)
    assert model.input_size == 64


def test_uncached_repo_gives_a_clear_message(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not in the local cache"):
        resolve_weights("medseg/never-downloaded", cache_dir=tmp_path)


def test_bad_names_are_explained(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="neither a folder"):
        resolve_weights("no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError):
        resolve_weights(empty)


def test_weights_dir_listing(tmp_path, tiny_weights):
    shutil.copytree(tiny_weights, tmp_path / "a.model")
    (tmp_path / "not-weights").mkdir()
    create_model("refiner", widths=[8, 16], input_size=32).save_pretrained(tmp_path / "a.refiner")
    assert list_local_weights(tmp_path) == ["a.model"]  # a refiner segments nothing on its own
    assert load_model(tmp_path / "a.refiner").arch == "refiner"


def test_hub_transfers_carry_a_helper_model_folder(tmp_path, tiny_weights):
    """Pushes and downloads use the same file patterns: a refiner kept in the weights folder travels with it."""
    from huggingface_hub.utils import filter_repo_objects

    from medseg_core.hub import _WEIGHT_FILES

    shutil.copytree(tiny_weights, tmp_path / "w")
    create_model("refiner", widths=[8, 16], input_size=32).save_pretrained(tmp_path / "w" / "refiner")
    (tmp_path / "w" / "notes.txt").write_text("not a weights file")
    (tmp_path / "w" / "model.onnx").write_bytes(b"an exported graph travels with its weights")
    files = sorted(p.relative_to(tmp_path / "w").as_posix() for p in (tmp_path / "w").rglob("*") if p.is_file())
    kept = set(filter_repo_objects(files, allow_patterns=_WEIGHT_FILES))
    assert {"config.json", "model.safetensors", "model.onnx", "refiner/config.json",
            "refiner/model.safetensors"} <= kept
    assert "notes.txt" not in kept


def test_model_card_rows_name_how_each_figure_was_measured(tmp_path, tiny_weights):
    import json
    import shutil

    from conftest import run_main

    folder = tmp_path / "tiny_unet.test"
    shutil.copytree(tiny_weights, folder)
    base = {"split": "test-kvasir", "n": 3, "dice": 0.5, "iou": 0.4, "threshold": 0.5, "tta": False,
            "postprocess": []}
    variants = {"raw": {}, "tta": {"tta": True, "dice": 0.6},
                "pp": {"postprocess": ["remove_small_components", "fill_holes"], "dice": 0.55}}
    files = []
    for name, change in variants.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({**base, **change}))
    run_main("train/model_card.py", "--weights", folder, "--name", "tiny_unet.test", "--eval", *files)
    card = (folder / "README.md").read_text()
    assert "| test-kvasir (n=3) | 0.5000 |" in card
    assert "| test-kvasir (n=3), flip TTA | 0.6000 |" in card
    assert "| test-kvasir (n=3), post-processing remove_small_components + fill_holes | 0.5500 |" in card
