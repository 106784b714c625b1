"""train/remote.py and train/pack_data.py: what travels to a remote GPU and back comes back the same."""

import importlib.resources
import json
import shutil

import pytest
import torch
from conftest import ROOT, run_main
from safetensors.torch import load_file

from medseg_core.data import read_split
from medseg_core.models.encoders import LITE_WEIGHTS


def test_packed_encoder_weights_restore_to_the_packaged_ones_without_their_head(tmp_path):
    spec = LITE_WEIGHTS["tf_efficientnet_lite0"]
    run_main("train/remote.py", "pack-encoders", tmp_path / "enc", "--names", "tf_efficientnet_lite0")
    packed = tmp_path / "enc" / f"{spec.filename}.safetensors"
    run_main("train/remote.py", "restore-encoders", tmp_path / "enc", tmp_path / "site")
    restored = torch.load(tmp_path / "site" / spec.package / "models" / spec.filename, weights_only=True)
    with importlib.resources.as_file(importlib.resources.files(spec.package) / "models" / spec.filename) as f:
        original = torch.load(f, weights_only=True)
    body = {k: v for k, v in original.items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    assert set(restored) == set(body) and len(body) < len(original)
    assert all(restored[k].dtype == torch.float32 for k in restored)
    assert all(torch.allclose(restored[k], body[k].float(), rtol=1e-3, atol=1e-4) for k in body)
    assert packed.stat().st_size < 0.4 * sum(v.numel() * 4 for v in original.values())
    (tmp_path / "enc" / "other.safetensors").write_bytes(packed.read_bytes())
    bad = run_main("train/remote.py", "restore-encoders", tmp_path / "enc", tmp_path / "site2", expect=1)
    assert "not a packed EfficientNet-Lite checkpoint" in bad.stderr


@pytest.mark.parametrize("no_ema_better", [True, False])
def test_collect_and_merge_bring_back_the_best_model_in_small_shards(tiny_weights, tmp_path, no_ema_better):
    run = tmp_path / "run"
    shutil.copytree(tiny_weights, run / "model")
    shutil.copytree(tiny_weights, run / "model_no_ema")
    state = load_file(run / "model_no_ema" / "model.safetensors")
    from safetensors.torch import save_file
    save_file({k: v + 1 for k, v in state.items()}, run / "model_no_ema" / "model.safetensors")
    summary = {"best_val_dice": 0.5, "best_val_dice_no_ema": 0.6 if no_ema_better else 0.4}
    (run / "train_summary.json").write_text(json.dumps(summary))
    out = tmp_path / "out"
    listing = run_main("train/remote.py", "collect", run, out, "tiny", "--limit-mb", "0.05").stdout.split()
    shards = [load_file(p) for p in listing if p.endswith(".safetensors")]
    # Every shard stays under the limit, unless it holds one tensor larger than the limit on its own.
    assert len(shards) > 1
    assert all(sum(v.numel() * v.element_size() for v in s.values()) <= 0.05 * 2**20 or len(s) == 1 for s in shards)
    back = tmp_path / "back"
    run_main("train/remote.py", "merge", out, "tiny", back)
    chosen = run / ("model_no_ema" if no_ema_better else "model")
    expected, got = load_file(chosen / "model.safetensors"), load_file(back / "model" / "model.safetensors")
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert json.loads((back / "train_summary.json").read_text()) == summary
    assert (back / "model" / "config.json").read_text() == (chosen / "config.json").read_text()
    missing = run_main("train/remote.py", "merge", out, "other", tmp_path / "x", expect=1)
    assert "no other_<n>.safetensors shards" in missing.stderr


def test_remote_has_help():
    assert "pack-encoders" in run_main("train/remote.py", "--help").stdout
    assert (ROOT / "docs" / "gpu_runs.md").is_file()


def test_pack_data_writes_a_pair_named_by_two_splits_once(data_root, tmp_path):
    """train/pack_data.py with a combined split file beside one of its parts (as docs/gpu_runs.md packs
    polyp-train and polyp-train+neopolyp): three distinct pairs are packed and counted once each, and both split
    files read back from the packed copy."""
    ids = [ln for ln in (data_root / "splits" / "polyp-val.txt").read_text().split() if ln][:3]
    part, combined = tmp_path / "part.txt", tmp_path / "part+more.txt"
    part.write_text("\n".join(ids[:2]) + "\n")
    combined.write_text("\n".join(ids) + "\n")
    out = tmp_path / "packed"
    proc = run_main("train/pack_data.py", "--data-root", data_root, "--splits", part, combined, "--out", out,
                      "--max-side", "64", "--quality", "70")
    assert "packed 3 pairs" in proc.stdout + proc.stderr
    assert [s.id for s in read_split(out, str(out / "splits" / "part+more.txt"))] == ids
    assert len(read_split(out, "part")) == 2
    assert len(list(out.rglob("*.jpg"))) == 3
