"""Model soups (medseg_core.soup, train/soup.py): the average itself, the greedy rule, the command on real images."""

import json
import shutil

import pytest
import torch
from conftest import TINY_UNET
from safetensors.torch import load_file, save_file

from medseg_core import Segmenter, create_model, soup


@pytest.fixture(scope="module")
def three_tiny(tmp_path_factory):
    """Three tiny binary U-Nets with different random weights, and one with another number of outputs."""
    root = tmp_path_factory.mktemp("soup")
    folders = []
    for seed in range(3):
        torch.manual_seed(seed)
        folders.append(root / f"m{seed}")
        create_model("unet", **TINY_UNET).save_pretrained(folders[-1])
    create_model("unet", **{**TINY_UNET, "num_classes": 3}).save_pretrained(root / "other")
    return folders, root / "other"


def test_the_soup_is_the_mean_of_the_weights(three_tiny):
    folders, other = three_tiny
    states = [load_file(f / "model.safetensors") for f in folders[:2]]
    avg = soup.average_weights(folders[:2])
    assert avg.keys() == states[0].keys()
    for k, v in avg.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (states[0][k].float() + states[1][k].float()) / 2)
        else:  # BatchNorm's counters: the first model's
            assert torch.equal(v, states[0][k])
    assert any(not torch.equal(avg[k], states[0][k]) for k in avg if avg[k].is_floating_point())
    with pytest.raises(ValueError, match="another network.*num_classes"):
        soup.average_weights([folders[0], other])
    tampered = shutil.copytree(folders[1], folders[0].parent / "tampered")
    state = load_file(tampered / "model.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    save_file({**state, key: torch.zeros(1, *state[key].shape[1:])}, tampered / "model.safetensors")
    with pytest.raises(ValueError, match=f"{key} has shape"):
        soup.average_weights([folders[0], tampered])


def test_greedy_soup_keeps_only_ingredients_that_do_not_lower_the_score(three_tiny, monkeypatch, tmp_path):
    folders = [str(f) for f in three_tiny[0]]
    first_weight = next(k for k, v in load_file(three_tiny[0][0] / "model.safetensors").items()
                        if v.is_floating_point() and v.numel() > 1)
    own = {f: load_file(f"{f}/model.safetensors")[first_weight].float().mean().item() for f in folders}
    target = min(own.values())  # scores rise as the soup's mean weight nears the lowest ingredient's

    def score(state, template, samples, device):
        return -abs(state[first_weight].mean().item() - target)

    monkeypatch.setattr(soup, "score_weights", score)
    chosen, scores, trail = soup.greedy_soup(folders, [], "cpu")
    ranked = sorted(folders, key=lambda f: abs(own[f] - target))
    assert chosen == [ranked[0]]  # the best alone scores 0; any addition moves the mean from the target: left out
    assert [t["add"] for t in trail] == ranked[1:] and not any(t["kept"] for t in trail)
    assert all(t["soup_score"] < -1e-6 for t in trail)
    twin = shutil.copytree(ranked[0], tmp_path / "twin")  # the same weights again: the soup's score ties, it joins
    chosen, _, trail = soup.greedy_soup([*folders, str(twin)], [], "cpu")
    assert sorted(chosen) == sorted([ranked[0], str(twin)]) and [t["kept"] for t in trail] == [True, False, False]
    assert scores == {f: pytest.approx(-abs(own[f] - target), abs=1e-6) for f in folders}


def test_soup_command_writes_a_loadable_model_and_its_scores(three_tiny, data_root, tmp_path, capsys):
    from medseg_core.commands import soup as soup_command

    folders = [str(f) for f in three_tiny[0]]
    split = tmp_path / "few.txt"
    split.write_text("\n".join((data_root / "splits" / "polyp-val.txt").read_text().split()[:2]))
    out, report = tmp_path / "soup", tmp_path / "soup.json"
    assert soup_command(["--models", *folders, "--output", str(out), "--greedy", "--data", str(data_root),
                         "--split", str(split), "--fp16", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["kind"] == "greedy" and set(result["ingredients"]) == set(folders)
    assert result["chosen"][0] == max(result["ingredients"], key=result["ingredients"].get)
    assert result["chosen"] == result["chosen"][:1] + [t["add"] for t in result["trail"] if t["kept"]]
    assert len(result["trail"]) == len(folders) - 1 and "greedy soup of" in printed
    assert all(v.dtype == torch.float16 for v in load_file(out / "model.safetensors").values()
               if v.is_floating_point())
    assert Segmenter.from_pretrained(out)(torch.zeros(80, 96, 3, dtype=torch.uint8).numpy()).mask.shape == (80, 96)
    with pytest.raises(SystemExit) as exc:  # no split: a usage error
        soup_command(["--models", *folders, "--output", str(out), "--greedy"])
    assert exc.value.code == 2


def test_a_multi_class_soup_is_scored_by_class_dice_on_its_own_mask_encoding(tiny_3class, data_root):
    samples = soup.read_split(data_root, "neopolyp-full-val")[:3]  # palette masks, as config.json records
    score = soup.score_weights(soup.average_weights([tiny_3class, tiny_3class]), tiny_3class, samples)
    segmenter = Segmenter.from_pretrained(tiny_3class, postprocess="none", class_bias=None)
    rows = soup.evaluate_samples(segmenter, samples, progress=False)
    assert score == pytest.approx(soup.split_class_dice(rows)["class_dice"])


def test_the_soup_does_not_inherit_settings_tuned_for_one_ingredient(tiny_3class, tmp_path):
    from medseg_core.hub import record_class_bias, record_postprocess, record_presence

    template = shutil.copytree(tiny_3class, tmp_path / "tuned")
    record_class_bias(template, [0.0, 0.0, 0.75])
    record_postprocess(template, ["region_class_consistency"])
    record_presence(template, {"score": "mean", "threshold": 0.9, "min_area": 0.0})
    (tmp_path / "soup").mkdir()
    (tmp_path / "soup" / "model.onnx").write_bytes(b"an earlier soup's export")
    soup.save_soup(soup.average_weights([template, tiny_3class]), template, tmp_path / "soup")
    assert not (tmp_path / "soup" / "model.onnx").exists()  # it would run the earlier weights
    config = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert "class_bias" not in config and "postprocess" not in config and "presence" not in config
    assert config["num_classes"] == json.loads((template / "config.json").read_text())["num_classes"]
    assert Segmenter.from_pretrained(tmp_path / "soup").class_bias is None
