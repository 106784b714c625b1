"""Recipes that state only what differs: ``base: other.yaml`` (relative to the recipe's folder), deep-merged, chained,
cycles refused; and the recipes in train/configs."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT

from medseg_core.commands import parse_train_args
from medseg_core.config import RecipeError, load_config

CONFIGS = ROOT / "train" / "configs"


def _write(folder, name: str, recipe: dict) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_a_recipe_states_what_differs_from_its_base(tmp_path):
    base = load_config(CONFIGS / "unet_lite0_polyp.yaml")
    _write(tmp_path / "sub", "polyp.yaml", yaml.safe_load((CONFIGS / "unet_lite0_polyp.yaml").read_text()))
    child = _write(tmp_path / "sub", "child.yaml", {
        "base": "polyp.yaml", "name": "child", "model": {"input_size": 256},
        "data": {"mix_splits": {"polyp-negative-train": 0.25}}, "train": {"epochs": 3}})
    cfg = load_config(child)
    assert cfg["name"] == "child" and cfg["model"]["input_size"] == 256 and cfg["train"]["epochs"] == 3
    # Every key the child leaves alone is the base's, down to the nested ones (deep merge).
    assert cfg["model"]["encoder"] == base["model"]["encoder"] == "tf_efficientnet_lite0"
    assert cfg["train"]["lr"] == base["train"]["lr"] and cfg["data"]["cache_max_side"] == 448
    assert cfg["data"]["mix_splits"] == {"polyp-negative-train": 0.25} and "base" not in cfg
    # Overrides still come last.
    assert load_config(child, ["--train.epochs", "5"])["train"]["epochs"] == 5


def test_bases_chain_and_nested_mappings_merge_key_by_key(tmp_path):
    _write(tmp_path, "a.yaml", {"name": "a", "model": {"arch": "unet", "encoder_weights": "random", "input_size": 64},
                                "data": {"mix_splits": {"polyp-negative-train": 0.2}},
                                "train": {"epochs": 1, "lr": 0.01}})
    _write(tmp_path, "b.yaml", {"base": "a.yaml", "name": "b", "data": {"mix_splits": {"other-train": 0.1}},
                                "train": {"epochs": 2}})
    c = _write(tmp_path / "c", "c.yaml", {"base": "../b.yaml", "train": {"lr": 0.5}})
    cfg = load_config(c)
    assert cfg["name"] == "b" and cfg["train"]["epochs"] == 2 and cfg["train"]["lr"] == 0.5
    assert cfg["model"]["input_size"] == 64
    assert cfg["data"]["mix_splits"] == {"polyp-negative-train": 0.2, "other-train": 0.1}
    # A value that is not a mapping replaces the base's, None included.
    d = _write(tmp_path, "d.yaml", {"base": "b.yaml", "data": {"mix_splits": None}})
    assert load_config(d)["data"]["mix_splits"] is None


@pytest.mark.parametrize("recipes, start, message", [
    ({"a.yaml": {"base": "a.yaml"}}, "a.yaml", "cycle: a.yaml -> a.yaml"),
    ({"a.yaml": {"base": "b.yaml"}, "b.yaml": {"base": "c.yaml"}, "c.yaml": {"base": "a.yaml"}}, "a.yaml",
     "cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"),
    ({"a.yaml": {"base": "missing.yaml"}}, "a.yaml", "missing.yaml does not exist"),
    ({"a.yaml": {"base": ["b.yaml"]}}, "a.yaml", "base must name another recipe file"),
    ({"a.yaml": {"base": "b.yaml"}, "b.yaml": {"train": {"epoch": 2}}}, "a.yaml", "did you mean epochs"),
])
def test_bad_bases_are_one_line_recipe_errors(recipes, start, message, tmp_path):
    for name, recipe in recipes.items():
        _write(tmp_path, name, recipe)
    with pytest.raises(RecipeError, match="^.*" + message.replace(".", r"\.")) as err:
        load_config(tmp_path / start)
    assert "\n" not in str(err.value)


def test_train_accepts_a_whole_section_override_named_only_by_the_base(tmp_path):
    _write(tmp_path, "a.yaml", {"model": {"arch": "unet"}, "labels": {"task": "binary"}})
    child = _write(tmp_path, "b.yaml", {"base": "a.yaml", "train": {"epochs": 1}})
    assert parse_train_args(["--config", child, "--labels", "{task: binary}"]).overrides == ["--labels",
                                                                                            "{task: binary}"]
    with pytest.raises(SystemExit):
        parse_train_args(["--config", child, "--base", "x.yaml"])


def test_every_recipe_in_train_configs_loads_and_the_set_stays_small():
    recipes = sorted(CONFIGS.glob("*.yaml"))
    assert len(recipes) <= 15, [r.name for r in recipes]
    for recipe in recipes:
        cfg = load_config(recipe)
        assert cfg["model"]["arch"] and cfg["name"], recipe.name
        base = yaml.safe_load(recipe.read_text()).get("base")
        assert base is None or (CONFIGS / base).is_file(), recipe.name
