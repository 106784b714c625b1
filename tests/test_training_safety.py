"""Training never ships a broken model: non-finite batches skipped without touching BatchNorm, non-finite weights
never saved, stored, averaged or exported; recipe values bounded; resume reads only safe formats; one label schema.

Runs are a few steps on a tiny synthetic dataset (48 px images), so the file needs no shared data."""

import json
import pathlib
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import ROOT, TINY_UNET, load_script
from safetensors.torch import load_file, save_file

from medseg_core import training
from medseg_core.checkpoint import (
    CHECKPOINT_FORMAT,
    NonFiniteModelError,
    check_finite,
    nonfinite_tensors,
    verify_checkpoint,
)
from medseg_core.cli import UsageError
from medseg_core.config import RecipeError, load_config, recipe_schema
from medseg_core.labels import LabelSchema
from medseg_core.models import create_model

CONFIG = str(ROOT / "train" / "configs" / "unet_lite0_polyp.yaml")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """Six 48 px images with a bright square lesion and its mask: four to train on, two to validate on."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        (root / "toy" / kind).mkdir(parents=True)
    ids = []
    for i in range(6):
        image = rng.integers(0, 120, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(4, 28, 2)
        image[y:y + 16, x:x + 16] = 230
        mask[y:y + 16, x:x + 16] = 255
        PIL.Image.fromarray(image).save(root / "toy" / "images" / f"{i}.png")
        PIL.Image.fromarray(mask).save(root / "toy" / "masks" / f"{i}.png")
        ids.append(f"toy/{i}")
    (root / "splits").mkdir()
    (root / "splits" / "toy-train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "splits" / "toy-val.txt").write_text("\n".join(ids[4:]) + "\n")
    return root


def synthetic_args(root, out, *extra, max_steps=2):
    return ["--config", CONFIG, "--output-dir", str(out), "--max-steps", str(max_steps), "--no-progress",
            "--data.root", str(root), "--data.train_split", "toy-train", "--data.val_split", "toy-val",
            "--train.batch_size", "2", "--model.input_size", "64",
            "--model.decoder_channels", "[16, 16, 16, 16, 8]", "--model.encoder_weights", "random", *extra]


def _saved_weights(out):
    return sorted(out.rglob("model.safetensors"))


# ---- --on-nan skip leaves BatchNorm untouched; a broken model is never saved --------------------------------------


def test_a_huge_learning_rate_with_on_nan_skip_never_saves_a_non_finite_model(synthetic_root, tmp_path):
    """lr 1e6: the first step blows the weights up, later forward passes overflow. Each skipped batch must leave the
    BatchNorm statistics as they were, and no model with a NaN or infinity may be saved, nor the run end with
    status 0 and no usable model."""
    out = tmp_path / "huge_lr"
    args = synthetic_args(synthetic_root, out, "--on-nan", "skip", "--train.lr", "1000000.0", "--train.epochs", "2",
                          max_steps=4)
    try:
        model_dir = training.main(args)
    except SystemExit as err:  # allowed: the run says that it has no finite model, with a non-zero status
        assert err.code not in (0, None) and "no model saved" in str(err.code)
        assert not (out / "model" / "model.safetensors").exists()
    else:
        assert (model_dir / "model.safetensors").is_file()
    for file in _saved_weights(out):
        state = load_file(file)
        assert not nonfinite_tensors(state), f"{file} holds non-finite tensors: {nonfinite_tensors(state)[:5]}"


def test_a_skipped_batch_leaves_the_batchnorm_statistics_as_they_were(synthetic_root, tmp_path, monkeypatch):
    """A batch whose forward pass overflows (an image of infinities) is skipped; the running statistics after it equal
    those before it, so validation and the saved model are unaffected."""
    seen = []
    real_epoch = training.train_one_epoch

    def poisoned_epoch(accelerator, model, loader, *args, **kwargs):
        def batches():
            for i, batch in enumerate(loader):
                if i == 1:  # the second batch of the run: a forward pass that overflows every BatchNorm
                    batch = {**batch, "image": torch.full_like(batch["image"], float("inf"))}
                    seen.append({k: v.clone() for k, v in model.state_dict().items() if "running" in k})
                yield batch

        result = real_epoch(accelerator, model, batches(), *args, **kwargs)
        seen.append({k: v.clone() for k, v in model.state_dict().items() if "running" in k})
        return result

    monkeypatch.setattr(training, "train_one_epoch", poisoned_epoch)
    model_dir = training.main(synthetic_args(synthetic_root, tmp_path / "poisoned", "--on-nan", "skip",
                                             "--train.epochs", "1"))
    before, after = seen
    assert before and before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed by the skipped batch"
    assert not nonfinite_tensors(load_file(model_dir / "model.safetensors"))


def test_save_best_refuses_a_model_with_a_non_finite_buffer(tmp_path):
    model = create_model("unet", **TINY_UNET)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("nan")
    with pytest.raises(NonFiniteModelError, match=r"NaN or infinite values in 1 of \d+ tensors .*running_var"):
        training.save_best(model, tmp_path / "model", {})
    assert not (tmp_path / "model").exists()
    bn.running_var[0] = 1.0
    training.save_best(model, tmp_path / "model", {})
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_check_finite_reads_parameters_and_buffers():
    model = create_model("unet", **TINY_UNET)
    check_finite(model, "a fresh model")
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteModelError, match="a broken model holds NaN or infinite values in 1 of"):
        check_finite(model, "a broken model")


@pytest.fixture()
def weights_pair(tmp_path):
    """Two finite weights folders of one tiny network, and a third whose BatchNorm statistics hold a NaN."""
    folders = []
    for name, seed in (("a", 0), ("b", 1), ("broken", 2)):
        torch.manual_seed(seed)
        model = create_model("unet", **TINY_UNET)
        if name == "broken":
            next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean[0] = float("nan")
        model.save_pretrained(tmp_path / name)
        folders.append(tmp_path / name)
    return folders


def test_store_fp16_refuses_non_finite_weights_and_values_that_overflow_fp16(weights_pair, tmp_path):
    store_fp16 = load_script("train/store_fp16.py").store_fp16
    good, _, broken = weights_pair
    with pytest.raises(SystemExit, match="store_fp16: .*NaN or infinite values in 1 of"):
        store_fp16(broken, tmp_path / "copy")
    assert not (tmp_path / "copy" / "model.safetensors").exists()
    state = load_file(good / "model.safetensors")
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first].clone()
    state[first].view(-1)[0] = 1e6  # finite in fp32, infinite in fp16 (largest 65504)
    save_file(state, good / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SystemExit, match="fp16 copy .*NaN or infinite"):
        store_fp16(good, tmp_path / "copy2")
    assert not (tmp_path / "copy2" / "model.safetensors").exists()


def test_a_soup_refuses_a_non_finite_ingredient(weights_pair, tmp_path):
    from medseg_core import soup

    a, b, broken = weights_pair
    with pytest.raises(ValueError, match="broken.*NaN or infinite values in 1 of"):
        soup.average_weights([a, broken])
    with pytest.raises(UsageError, match="medseg-soup: .*broken.*NaN or infinite"):
        soup.main(["--models", str(a), str(broken), "--output", str(tmp_path / "soup")])
    assert not (tmp_path / "soup").exists()
    with pytest.raises(UsageError, match="fp16 soup .*NaN or infinite"):  # 1e6 is finite in fp32 only
        soup.save_soup({"w": torch.tensor([1e6])}, a, tmp_path / "soup16", fp16=True)
    assert not (tmp_path / "soup16" / "model.safetensors").exists()
    soup.main(["--models", str(a), str(b), "--output", str(tmp_path / "soup")])
    assert not nonfinite_tensors(load_file(tmp_path / "soup" / "model.safetensors"))


def test_export_refuses_a_non_finite_model(weights_pair, tmp_path):
    from medseg_core.export import export_onnx

    *_, broken = weights_pair
    with pytest.raises(NonFiniteModelError, match="NaN or infinite values in 1 of"):
        export_onnx(broken, tmp_path / "onnx")
    assert not (tmp_path / "onnx" / "model.onnx").exists()


# ---- recipe values bounded like weights' configs ---------------------------------------------------------------


@pytest.mark.parametrize("override, hint", [
    (["--model.input_size", "8192"], "model.input_size must be a multiple of 32 .* to 1024 .*got 8192"),
    (["--model.input_size", "200"], "model.input_size must be a multiple of 32"),
    (["--model.num_classes", "100"], "model.num_classes = 100 is out of range"),
    (["--model.decoder_channels", "[16, 16, 16, 16, 100000]"], "model.decoder_channels .* out of range"),
    (["--train.batch_size", "100000"], "train.batch_size must be an integer from 1 to 512"),
    (["--train.epochs", "10000000"], "train.epochs must be an integer from 1 to 10000"),
    (["--train.epochs", "true"], "train.epochs must be an integer"),
    (["--train.lr", "1e-4"], "train.lr must be .*YAML reads 1e-4 as text"),
    (["--train.lr", "-0.1"], "train.lr must be a learning rate from 0 to"),
    (["--train.lr", ".nan"], "train.lr must be"),
    (["--train.precision", "no"], 'train.precision must be one of auto, no, fp16, bf16 .*write "no"'),
    (["--train.num_workers", "1000"], "train.num_workers must be an integer from 0 to 64"),
    (["--data.cache_max_side", "100000"], "data.cache_max_side must be an integer from 32 to 16383"),
    (["--name", "../../elsewhere"], "name must be a plain name"),
])
def test_recipe_values_are_bounded(override, hint):
    with pytest.raises(RecipeError, match=hint):
        load_config(CONFIG, override)


def test_an_8192_input_is_refused_in_one_line_before_anything_is_built(tmp_path):
    """The issue's reproduction: --model.input_size 8192 was OOM-killed at 19.9 GB after 70 s. Now a usage error
    (status 2), one line, no traceback, and no run folder written."""
    started = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), "--config", CONFIG, "--output-dir",
                           str(tmp_path / "run"), "--model.input_size", "8192"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.input_size" in lines[0] and "8192" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
    print(f"refused in {time.time() - started:.1f} s (interpreter start included): {lines[0]}")


# ---- one label schema per run -----------------------------------------------------------------------------------


def test_training_main_builds_the_label_schema_once(synthetic_root, tmp_path, monkeypatch):
    """After the recipe is read (its validation builds a schema to check it), a run builds its label schema exactly
    as often as one ``recipe_schema`` call does, and passes it to the data, the loss, each validation, each saved
    model. Two epochs, so validation and saving run twice."""
    built = []
    real_init = LabelSchema.__post_init__

    def counting_init(self):
        built.append(self.task)
        real_init(self)

    monkeypatch.setattr(LabelSchema, "__post_init__", counting_init)
    args = synthetic_args(synthetic_root, tmp_path / "run", "--train.epochs", "2", "--train.max_train_samples", "2")
    cfg = load_config(CONFIG, args[args.index("--no-progress") + 1:])
    built.clear()
    recipe_schema(cfg)
    one_call = len(built)
    real_load = training.load_config

    def load(*a, **kw):
        loaded = real_load(*a, **kw)
        built.clear()  # count from here: what the run builds itself
        return loaded

    real_card = training.write_model_card

    def card(*a, **kw):  # the model card describes the config.json it is given, as for any weights (hub.py)
        n = len(built)
        real_card(*a, **kw)
        del built[n:]

    monkeypatch.setattr(training, "load_config", load)
    monkeypatch.setattr(training, "write_model_card", card)
    training.main(args)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["epochs"] == 2
    assert len(built) == one_call, f"{len(built)} schema constructions; one recipe_schema call makes {one_call}"


# ---- resume reads only safe formats ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpointed(synthetic_root, tmp_path_factory):
    """One step of a run with an EMA (so the checkpoint holds the progress and the averaged weights): its folder
    and checkpoint_1."""
    out = tmp_path_factory.mktemp("checkpointed")
    training.main(synthetic_args(synthetic_root, out, "--train.epochs", "3", "--train.max_train_samples", "2",
                                 "--train.ema", "0.5", max_steps=1))
    return out, out / "checkpoints" / "checkpoint_1"


def _resume_args(root, out, folder, *extra):
    return synthetic_args(root, out, "--train.epochs", "3", "--train.max_train_samples", "2", "--train.ema", "0.5",
                          "--resume", str(folder), *extra, max_steps=2)


class _Payload:
    """A pickle that creates a file when unpickled: stands for any code a crafted checkpoint could run."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_a_checkpoint_holds_no_pickled_objects_and_resumes_from_its_listed_files(checkpointed, synthetic_root,
                                                                                tmp_path):
    out, ckpt = checkpointed
    marker = verify_checkpoint(ckpt)
    assert marker["format"] == CHECKPOINT_FORMAT and marker["step"] == 1
    assert set(marker["files"]) == {p.name for p in ckpt.iterdir()} - {"medseg_checkpoint.json"}
    assert not list(ckpt.glob("custom_checkpoint_*")) and {"progress.json", "ema.safetensors"} <= set(marker["files"])
    assert json.loads((ckpt / "progress.json").read_text())["step"] == 1
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    training.main(_resume_args(synthetic_root, resumed, resumed / "checkpoints" / "checkpoint_1"))
    summary = json.loads((resumed / "train_summary.json").read_text())
    assert (summary["steps"], summary["epochs"]) == (2, 2)


def test_resume_refuses_a_folder_with_a_crafted_pickle_and_runs_none_of_it(checkpointed, synthetic_root, tmp_path):
    """The issue's reproduction: --resume <folder> loaded custom_checkpoint_0.pkl with pickle, so a run folder from
    someone else ran their code. Now the folder is refused and the pickle is never opened."""
    _, ckpt = checkpointed
    crafted, ran = tmp_path / "crafted", tmp_path / "code-ran"
    shutil.copytree(ckpt, crafted)
    (crafted / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(ran)))
    with pytest.raises(UsageError, match=r"refused: it holds pickled Python objects \(custom_checkpoint_0.pkl\).*"
                                         r"--trust-resume"):
        training.main(_resume_args(synthetic_root, tmp_path / "run", crafted))
    assert not ran.exists(), "the crafted pickle ran"


def test_a_changed_checkpoint_is_refused_and_even_trusted_reads_tensors_only(checkpointed, synthetic_root, tmp_path):
    """A file swapped for a crafted pickle no longer matches the marker's hash: refused. With --trust-resume the
    folder is loaded as it is, but Accelerate's files are read with torch.load(weights_only=True): the pickle is
    rejected, not run."""
    _, ckpt = checkpointed
    crafted, ran = tmp_path / "crafted", tmp_path / "code-ran"
    shutil.copytree(ckpt, crafted)
    torch.save(_Payload(ran), crafted / "optimizer.bin")
    with pytest.raises(UsageError, match=r"refused: its files changed since it was written \(optimizer.bin\)"):
        training.main(_resume_args(synthetic_root, tmp_path / "run", crafted))
    with pytest.raises(pickle.UnpicklingError):
        training.main(_resume_args(synthetic_root, tmp_path / "run2", crafted, "--trust-resume"))
    assert not ran.exists(), "the crafted pickle ran"
    (crafted / "extra.bin").write_bytes(b"")
    with pytest.raises(UsageError, match=r"files differ from those it was written with \(added: extra.bin\)"):
        training.main(_resume_args(synthetic_root, tmp_path / "run3", crafted))


def test_an_older_trainers_pickled_checkpoint_needs_trust_resume(checkpointed, synthetic_root, tmp_path):
    """The layout written before (Accelerate's custom_checkpoint_*.pkl for the progress and the EMA, a marker without
    a file list) is refused by default and loaded with --trust-resume, which says what it does."""
    out, ckpt = checkpointed
    older = tmp_path / "older"
    shutil.copytree(out, older)
    folder = older / "checkpoints" / "checkpoint_1"
    torch.save(json.loads((folder / "progress.json").read_text()), folder / "custom_checkpoint_0.pkl")
    torch.save(load_file(folder / "ema.safetensors"), folder / "custom_checkpoint_1.pkl")
    (folder / "progress.json").unlink()
    (folder / "ema.safetensors").unlink()
    (folder / "medseg_checkpoint.json").write_text(json.dumps({"step": 1, "saved_at": 0.0, "epoch": 1}))
    with pytest.raises(UsageError, match="refused: its medseg_checkpoint.json lists no files"):
        training.main(_resume_args(synthetic_root, older, "latest"))
    training.main(_resume_args(synthetic_root, older, "latest", "--trust-resume"))
    summary = json.loads((older / "train_summary.json").read_text())
    assert (summary["steps"], summary["epochs"]) == (2, 2)
