"""Training (medseg_core.training, the loop train/train.py and medseg-train run) on a few real images, tiny inputs,
a couple of steps; recipes (medseg_core.config): strict keys, optimisers, schedules."""

import json

import pytest
import torch
from conftest import ROOT, run_main
from safetensors.torch import load_file

from medseg_core import Segmenter, load_model, training
from medseg_core.config import DEFAULTS, RecipeError, load_config
from medseg_core.enhance import VIEWS
from medseg_core.models.dynasiam import DynaSiam

CONFIG = str(ROOT / "train" / "configs" / "unet_lite0_polyp.yaml")
ZOO_CONFIG = ROOT / "train" / "configs" / "zoo_polyp.yaml"


def tiny_args(data_root, out, *extra, max_steps=2):
    return [
        "--config", CONFIG, "--output-dir", str(out), "--max-steps", str(max_steps), "--no-progress",
        "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--model.input_size", "64", "--model.decoder_channels", "[16, 16, 16, 16, 8]",
        "--model.encoder_weights", "random", *extra,
    ]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model_dir = training.main(tiny_args(data_root, out))
    return out, model_dir


def test_train_writes_a_loadable_model_card_and_checkpoint(trained):
    out, model_dir = trained
    model = load_model(model_dir)
    assert model.input_size == 64 and model.num_classes == 1
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    card = (model_dir / "README.md").read_text()
    assert "polyp-train" in card and "polyp-val" in card
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["best_val_dice"] <= 1.0
    assert list((out / "checkpoints").glob("checkpoint_*"))
    assert list(out.rglob("events.out.tfevents.*")), "TensorBoard tracker wrote nothing"


def test_resume_continues_from_the_checkpoint(trained, data_root):
    out, _ = trained
    training.main(tiny_args(data_root, out, "--resume", "latest", max_steps=4))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["epochs"] == 2


def test_overrides_and_bad_arguments(tmp_path):
    cfg = load_config(CONFIG, ["--train.epochs", "3", "--model.encoder", "tf_efficientnet_lite2"])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["encoder"] == "tf_efficientnet_lite2"
    assert cfg["data"]["train_split"] == "polyp-train"
    with pytest.raises(RecipeError, match="pairs"):
        load_config(CONFIG, ["--train.epochs"])
    with pytest.raises(SystemExit):
        training.resolve_resume_path("latest", tmp_path)


@pytest.mark.parametrize(("override", "hint"), [
    (["--train.epoch", "2"], "did you mean epochs"),
    (["--data.train-split", "x", "--data.val_splt", "y"], "did you mean val_split"),
    (["--model.encodr", "tf_efficientnet_lite2"], "did you mean encoder"),
    (["--trian.epochs", "2"], "did you mean train"),
    (["--train.optimizer", "adagrad"], "adamw, adam, sgd"),
    (["--train.schedule", "poly"], "cosine, exponential, constant"),
    (["--train.epochs", "0"], "an integer from 1 to"),
    (["--train.augment_colour", "5"], "factor from 0 to 3"),
    (["--train.negative_crops", "1.5"], "probability from 0 to 1"),
    (["--train.repeat_factor_threshold", "2"], "fraction from 0 to 1"),
    (["--model.arch", "unett"], "did you mean unet"),
])
def test_unknown_recipe_keys_and_values_are_errors_with_a_hint(override, hint):
    with pytest.raises(RecipeError, match=hint):
        load_config(CONFIG, override)


def test_repeat_factor_sampling_draws_the_rarer_class_more_often(data_root, caplog):
    from accelerate import Accelerator

    from medseg_core.data import RepeatFactorSampler
    from medseg_core.models import create_model

    cfg = load_config(ROOT / "train" / "configs" / "unet_lite2_neopolyp_full_gpu.yaml", [
        "--data.root", str(data_root), "--data.train_split", "neopolyp-full-train", "--data.cache_max_side", "64",
        "--train.num_workers", "0",
        "--train.max_train_samples", "24", "--train.max_val_samples", "2", "--train.repeat_factor_threshold", "1"])
    cfg["_no_progress"] = True
    model = create_model("unet", encoder="tf_efficientnet_lite0", encoder_weights="random", num_classes=3,
                         input_size=64)
    with caplog.at_level("INFO", logger="medseg.train"):
        train_dl, _ = training.get_dataloaders(Accelerator(cpu=True), cfg, model)
    assert "non-neoplastic in" in caplog.text  # the log names each class with its share and factor
    sampler = train_dl.sampler
    assert isinstance(sampler, RepeatFactorSampler) and len(sampler) == 24
    presence = train_dl.dataset.class_presence()
    weights = sampler.factors.numpy()
    rare = presence[:, 1] & ~presence[:, 0]  # only the rarer (non-neoplastic) class
    common = presence[:, 0] & ~presence[:, 1]
    assert presence[:, 1].mean() < presence[:, 0].mean() and rare.any() and common.any()
    assert weights[rare].min() > weights[common].max()
    cfg["train"]["repeat_factor_threshold"] = 0.0
    assert not isinstance(training.get_dataloaders(Accelerator(cpu=True), cfg, model)[0].sampler,
                          RepeatFactorSampler)


def test_a_typo_stops_train_with_the_hint(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit, match="did you mean epochs"):
        training.main(tiny_args(data_root, tmp_path, "--train.epoch", "2"))


@pytest.mark.parametrize(("schedule", "expected"), [
    # 10 steps per epoch, 4 epochs: warm-up over 5 steps then cosine; x0.5 every 2 epochs; flat
    ({"schedule": "cosine", "warmup_epochs": 0.5}, [0.2, 1.0, 0.5, 0.0]),
    ({"schedule": "exponential", "gamma": 0.5, "step_epochs": 2}, [1.0, 1.0, 0.5, 0.25]),
    ({"schedule": "constant"}, [1.0, 1.0, 1.0, 1.0]),
])
def test_schedules(schedule, expected):
    param = torch.nn.Parameter(torch.zeros(1))
    train = {**DEFAULTS["train"], **schedule, "optimizer": "sgd", "lr": 1.0}
    optimizer = training.build_optimizer([param], train)
    scheduler = training.build_scheduler(optimizer, train, steps_per_epoch=10, total_steps=40)
    lrs = []
    for _ in range(41):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [lrs[i] for i in (0, 4, 22, 40)] == pytest.approx(expected, abs=0.06)


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                           ("sgd", torch.optim.SGD)])
def test_optimizers(name, cls):
    optimizer = training.build_optimizer([torch.nn.Parameter(torch.zeros(1))],
                                         {**DEFAULTS["train"], "optimizer": name, "weight_decay": 1e-4})
    assert type(optimizer) is cls and optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_push_to_hub_offline_fails_clearly_but_keeps_the_weights(data_root, tmp_path, caplog):
    with pytest.raises(SystemExit):
        training.main(tiny_args(data_root, tmp_path, "--push-to-hub", "medseg/test-offline"))
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert "could not push to the Hub" in caplog.text


# ---- the architectures' own recipes ----------------------------------------------------------------------------


def test_pranet_trains_with_the_structure_loss(data_root, tmp_path):
    """The real train.py on the zoo recipe with PraNet and its structure loss (tiny: Lite0 encoder, 64 px, two
    steps, four real images)."""
    out = tmp_path / "run"
    model_dir = training.main([
        "--config", str(ZOO_CONFIG), "--output-dir", str(out), "--max-steps", "2", "--no-progress",
        "--model.arch", "pranet", "--train.loss", "structure", "--model.encoder_weights", "imagenet",
        "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--model.input_size", "64", "--model.encoder", "tf_efficientnet_lite0", "--model.rfb_channels", "8",
        "--model.ra_channels", "[16, 8, 8]",
    ])
    model = load_model(model_dir)
    assert model.arch == "pranet" and model.config["encoder_weights"] == "imagenet"
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert json.loads((out / "train_summary.json").read_text())["config"]["train"]["loss"] == "structure"


def test_dynasiam_recipe_trains_two_steps(data_root, tmp_path, example_image):
    model_dir = training.main([
        "--config", str(ROOT / "train" / "configs" / "dynasiam_polyp.yaml"), "--output-dir", str(tmp_path),
        "--max-steps", "2", "--no-progress", "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--train.num_workers", "0", "--model.input_size", "64", "--model.decoder_channels", "[16, 16, 16, 16, 8]",
        "--model.dfi_reduction", "16",
    ])
    model = load_model(model_dir)
    assert isinstance(model, DynaSiam) and model.views == VIEWS and model.input_size == 64
    assert Segmenter(model, device="cpu")(example_image).mask.shape == example_image.shape[:2]


def test_fine_tuning_starts_from_the_given_weights_with_an_ema_and_several_scales(trained, data_root, tmp_path):
    """train.init_from loads the weights; at lr 0 the saved (EMA) model keeps exactly those parameters, while the
    batches ran at 0.5x and 1.5x the input size."""
    _, first = trained
    model_dir = training.main(tiny_args(data_root, tmp_path, "--train.init_from", str(first), "--train.lr", "0",
                                        "--train.ema", "0.9", "--train.scales", "[0.5, 1.5]"))
    before, after = load_model(first), load_model(model_dir)
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
    card = (model_dir / "README.md").read_text()
    assert f"Initialised from `{first}`" in card and "EMA of weights (decay 0.9)" in card and "x0.5, x1.5" in card
    fresh = training.main(tiny_args(data_root, tmp_path / "fresh", "--train.lr", "0"))
    assert "best_val_dice_no_ema" not in json.loads((tmp_path / "fresh" / "train_summary.json").read_text())
    assert not (tmp_path / "fresh" / "model_no_ema").exists()
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), load_model(fresh).parameters()))


def test_an_ema_run_also_keeps_its_trained_weights_as_the_without_ema_row(data_root, tmp_path):
    """With an EMA, ``model/`` holds the average and ``model_no_ema/`` the trained weights themselves (those of the
    last checkpoint here, where the one epoch is also the best), each with its validation score in the summary."""
    # timm's EMA copies the weights for its first two updates: four steps (of one epoch) to make them differ.
    model_dir = training.main(tiny_args(data_root, tmp_path, "--train.ema", "0.9", "--train.lr", "0.01",
                                        "--train.max_train_samples", "8", max_steps=4))
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["best_epoch_no_ema"] == summary["best_epoch"] == 1
    assert 0.0 <= summary["best_val_dice_no_ema"] <= 1.0
    trained = load_file(next((tmp_path / "checkpoints").glob("checkpoint_*")) / "model.safetensors")
    raw, average = load_model(tmp_path / "model_no_ema"), load_model(model_dir)
    for name, value in raw.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)
    assert any(not torch.equal(value, average.state_dict()[name]) for name, value in raw.state_dict().items()
               if value.is_floating_point())


def test_history_lists_each_epochs_validation_from_the_tensorboard_logs(data_root, tmp_path):
    """train/history.py: one row per epoch, numbered as the trainer logged it, with the validation metrics (and, with
    an EMA, those of the trained weights) but not the per-step series; the best row's score is the summary's; a
    folder without logs is a clear error."""
    # 5 epochs of 2 steps: the trainer logs the per-step series every 10 steps, so one exists to be left out.
    training.main(tiny_args(data_root, tmp_path / "run", "--train.epochs", "5", "--train.ema", "0.9",
                            max_steps=10))
    out = run_main("train/history.py", tmp_path / "run", "--json", tmp_path / "h.json").stdout
    rows = json.loads((tmp_path / "h.json").read_text())["rows"]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    assert all({"val/score", "val_no_ema/score", "train/epoch_loss"} <= r.keys() for r in rows)
    best = max(rows, key=lambda r: r["val/score"])
    assert (best["epoch"], best["val/score"]) == (summary["best_epoch"], pytest.approx(summary["best_val_dice"]))
    assert "train/loss" not in out and not any(k in r for r in rows for k in ("train/loss", "train/lr"))
    assert "no TensorBoard event files" in run_main("train/history.py", tmp_path / "empty", expect=1).stderr


def test_history_keeps_the_later_value_of_a_step_logged_twice(tmp_path):
    """A resumed run logs the steps since its checkpoint again, in a new event file: the later values win, whatever
    order the files sort in."""
    from torch.utils.tensorboard import SummaryWriter

    for folder, wall, score in (("a", 200.0, 0.2), ("b", 100.0, 0.1)):
        writer = SummaryWriter(str(tmp_path / "run" / folder))
        for tag, value in (("val/score", score), ("train/epoch", 3), ("train/loss", 1.0)):
            writer.add_scalar(tag, value, 7, walltime=wall)
        writer.close()
    run_main("train/history.py", tmp_path / "run", "--json", tmp_path / "h.json")
    rows = json.loads((tmp_path / "h.json").read_text())["rows"]
    assert rows == [{"epoch": 3, "step": 7, "val/score": pytest.approx(0.2)}]


def test_init_from_weights_of_another_shape_is_a_clear_error(trained, data_root, tmp_path):
    _, first = trained  # one output channel
    with pytest.raises(SystemExit, match="do not fit the recipe's model"):
        training.main(tiny_args(data_root, tmp_path, "--train.init_from", str(first), "--model.num_classes", "3",
                                "--labels.task", "multiclass", "--labels.class_names", "[bg, a, b]"))
    with pytest.raises(SystemExit, match="neither a folder"):
        training.main(tiny_args(data_root, tmp_path, "--train.init_from", str(tmp_path / "nothing")))


def test_init_reset_head_seeds_a_model_for_other_classes_from_a_binary_one(trained, data_root, tmp_path, caplog):
    """With train.init_reset_head the binary model seeds a 3-class one: at lr 0 every parameter but the output
    layer's is the binary model's; the output layer starts fresh with 3 outputs and the log names it. A difference
    beyond the number of outputs is still refused."""
    _, first = trained
    three = ("--model.num_classes", "3", "--labels.task", "multiclass", "--labels.class_names", "[bg, a, b]")
    with caplog.at_level("INFO", logger="medseg.train"):
        model_dir = training.main(tiny_args(data_root, tmp_path / "three", *three, "--train.init_from", str(first),
                                            "--train.init_reset_head", "true", "--train.lr", "0"))
    # Parameters, not buffers: the BatchNorm running statistics move in training even at lr 0.
    before, after = dict(load_model(first).named_parameters()), dict(load_model(model_dir).named_parameters())
    fresh = [k for k in after if after[k].shape != before[k].shape]
    assert fresh == ["head.weight", "head.bias"] and after["head.weight"].shape[0] == 3
    for k in after.keys() - set(fresh):
        torch.testing.assert_close(after[k], before[k], msg=k)
    assert "head.weight starts fresh (3 outputs here, 1 in" in caplog.text
    with pytest.raises(SystemExit, match="beyond its number of outputs"):
        training.main(tiny_args(data_root, tmp_path / "wide", *three, "--train.init_from", str(first),
                                "--train.init_reset_head", "true", "--model.decoder_channels", "[16, 16, 16, 16, 12]"))


@pytest.mark.parametrize(("override", "hint"), [
    (["--train.ema", "1.0"], "decay in"),
    (["--train.scales", "0.5"], "list of factors"),
    (["--train.scales", "[0.1, 1.0]"], "between 0.25 and 2"),
    (["--train.batch_dice", "yes please"], "true or false"),
    (["--train.init_reset_head", "1"], "true or false"),
    (["--train.init_reset_head", "true"], "none are named"),
    (["--train.batch_dice", "true", "--train.loss", "structure"], "dice_ce and dice losses"),
    (["--data.mix_splits", "polyp-negative-train"], "map split names"),
    (["--data.mix_splits", "{polyp-negative-train: 1.0}"], "between 0 and 1"),
    (["--data.mix_splits", "{polyp-negative-train: yes}"], "between 0 and 1"),
    (["--data.mix_splits", "{a: 0.5, b: 0.5}"], "sum to 1"),
    (["--data.mix_splits", "{polyp-train: 0.2}"], "train split"),
    (["--data.mix_splits", "{a: 0.2}", "--train.repeat_factor_threshold", "0.1"], "use one"),
    (["--data.val_split", "[]"], "split name or a list"),
    (["--data.mix_splitz", "{a: 0.2}"], "did you mean mix_splits"),
    (["--train.augment_preset", "none"], "full, flips"),
    (["--train.select", "first"], "best, last"),
    (["--train.dice_skip_absent", "1"], "true or false"),
    (["--train.dice_skip_absent", "true", "--train.loss", "ce"], "dice_ce and dice losses"),
])
def test_ema_scales_and_batch_dice_are_checked(override, hint):
    with pytest.raises(RecipeError, match=hint):
        load_config(CONFIG, override)


def test_rescale_batch_keeps_labels_and_rounds_to_multiples_of_32():
    images = torch.rand(2, 3, 96, 64)
    masks = torch.zeros(2, 96, 64, dtype=torch.long)
    masks[:, 20:60, 10:40] = 2
    small, small_masks = training.rescale_batch(images, masks, 0.75)
    assert small.shape == (2, 3, 64, 64) and small_masks.shape == (2, 64, 64) and small_masks.dtype == torch.long
    assert set(small_masks.unique().tolist()) == {0, 2}
    big, big_masks = training.rescale_batch(images, masks[:, None].repeat(1, 3, 1, 1), 1.4)  # multi-label planes
    assert big.shape == (2, 3, 128, 96) and big_masks.shape == (2, 3, 128, 96)
    same = training.rescale_batch(images, masks, 1.0)
    assert same[0] is images and same[1] is masks


def test_mixed_batches_hold_the_extra_split_at_its_share(data_root, caplog):
    """data.mix_splits: every batch draws its share from the lesion-free frames, the main split is shown once an
    epoch, and the model is selected on the two validation splits read together."""
    from accelerate import Accelerator

    from medseg_core.data import MixedBatchSampler
    from medseg_core.models import create_model

    cfg = load_config(ROOT / "train" / "configs" / "unet_lite2_polyp_negatives_025.yaml", [
        "--data.root", str(data_root), "--data.cache_max_side", "64", "--train.max_train_samples", "24",
        "--train.max_val_samples", "200"])
    cfg["_no_progress"] = True
    model = create_model("unet", encoder="tf_efficientnet_lite0", encoder_weights="random", input_size=64)
    with caplog.at_level("INFO", logger="medseg.train"):
        train_dl, val_dl = training.get_dataloaders(Accelerator(cpu=True), cfg, model)
    assert "25% of each batch from polyp-negative-train" in caplog.text
    batches = train_dl.batch_sampler
    assert isinstance(batches, MixedBatchSampler) and len(batches) == 24 // 6
    drawn = list(batches)
    assert all(len(b) == 8 for b in drawn)
    assert all(sum(i >= 24 for i in b) == 2 for b in drawn)  # 0.25 x 8 from the lesion-free pool
    assert sorted(i for b in drawn for i in b if i < 24) == list(range(24))  # the main split once
    ids = [train_dl.dataset.samples[i].id for i in drawn[0] if i >= 24]
    assert all(i.startswith("polyp-negative") or i.startswith("polypgen-negative") for i in ids)
    val_ids = [s.id for s in val_dl.dataset.samples]
    assert any(i.startswith("polypgen-negative") for i in val_ids) and any("kvasir" in i for i in val_ids)
    assert "polyp-negative-train" in training.data_text(cfg) and "polyp-val` + `polyp-negative-val" in \
        training.data_text(cfg)


def test_mixed_batch_sampler_keeps_a_fractional_share_on_average():
    from medseg_core.data import MixedBatchSampler

    g = torch.Generator().manual_seed(0)
    sampler = MixedBatchSampler(1000, [30], [0.125], batch_size=4, generator=g)
    extra = [sum(i >= 1000 for i in b) for b in sampler]
    assert 0.1 < sum(extra) / (4 * len(extra)) < 0.15 and set(extra) == {0, 1}
    with pytest.raises(ValueError, match="sum below 1"):
        MixedBatchSampler(10, [5, 5], [0.5, 0.5], batch_size=4)


def test_select_last_keeps_the_weights_of_the_end_of_the_run(data_root, tmp_path):
    """``train.select: last`` (the plain loop of shared/peers.md): model/ holds the final weights, whatever the
    validation said, and flips-only augmentation trains."""
    model_dir = training.main(tiny_args(data_root, tmp_path, "--train.select", "last", "--train.epochs", "2",
                                        "--train.augment_preset", "flips", "--train.lr", "0.01", max_steps=4))
    last = max((tmp_path / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[-1]))
    final = load_file(last / "model.safetensors")
    for name, value in load_model(model_dir).state_dict().items():
        torch.testing.assert_close(value, final[name], msg=name)
    card = (model_dir / "README.md").read_text()
    assert "no selection on validation" in card and "at the last epoch, 2" in card
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["last_epoch"] == 2 and 0.0 <= summary["last_val_score"] <= 1.0


def test_flips_preset_only_flips_and_turns():
    from medseg_core.transforms import train_transform
    names = [type(t).__name__ for t in train_transform(64, (0.5,) * 3, (0.5,) * 3, preset="flips").transforms]
    assert names == ["Resize", "HorizontalFlip", "VerticalFlip", "RandomRotate90", "Normalize", "ToTensorV2"]
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        train_transform(64, (0.5,) * 3, (0.5,) * 3, preset="heavy")
