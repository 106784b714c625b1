"""Weights read once (medseg_core.weights): one open of config.json per load, the same model as the Hub mixin
builds, one bad weights folder is one refused model (the app serves the others), files and the refiner stay inside
their folder after realpath, exported graphs are checked against the config before they run, refused weights are
one line at the commands."""

import builtins
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT

import medseg_core.hub
from medseg_core import Segmenter, commands, create_model
from medseg_core.hub import UnsafeWeightsError, list_local_weights, load_model


def scan_local_weights(weights_dir):
    return medseg_core.hub.scan_local_weights(weights_dir)


@pytest.fixture()
def config_opens(monkeypatch):
    """How many times a file named config.json is opened (builtins.open and io.open, which pathlib and the Hub
    mixin use), as a list of paths."""
    opened = []
    real_open = io.open

    def counting(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith("config.json"):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    monkeypatch.setattr(io, "open", counting)
    return opened


def _copy(tiny_weights, folder, **changes):
    shutil.copytree(tiny_weights, folder)
    if changes:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_config_json_is_opened_once_per_load(tiny_weights, tmp_path, config_opens):
    folder = _copy(tiny_weights, tmp_path / "once", postprocess=["fill_holes"], presence={
        "score": "mean", "threshold": 0.5, "min_area": 0.0})
    config_opens.clear()
    segmenter = Segmenter.from_pretrained(folder, device="cpu")
    assert len(config_opens) == 1, config_opens
    assert segmenter.recorded_postprocess == ("fill_holes",) and segmenter.presence.threshold == 0.5
    config_opens.clear()
    load_model(folder)
    assert len(config_opens) == 1, config_opens
    config_opens.clear()
    weights = medseg_core.hub.resolve(folder)
    Segmenter.from_pretrained(weights, device="cpu")  # the Weights already read: no second open
    assert len(config_opens) == 1, config_opens


def test_the_app_reads_each_config_once(tiny_weights, tmp_path, monkeypatch, config_opens):
    from medseg_core import webapp

    root = tmp_path / "weights"
    for name in ("a.model", "b.model"):
        _copy(tiny_weights, root / name)
    config_opens.clear()
    monkeypatch.setattr(medseg_core.hub, "WEIGHTS_DIR", root)
    monkeypatch.setattr(webapp, "OUTPUT_DIR", tmp_path / "outputs")
    webapp.get_segmenter.cache_clear()
    try:
        assert webapp.available_models() == ["a.model", "b.model"]
        webapp.model_choices(webapp.available_models())
        report = webapp.segment(str(EXAMPLES[0]), "a.model", False, True)[4]
    finally:
        webapp.get_segmenter.cache_clear()
    assert report["model"] == "a.model"
    assert sorted(config_opens) == sorted(str(root / n / "config.json") for n in ("a.model", "b.model"))


@pytest.mark.parametrize("folder", [None, *sorted((ROOT / "weights").glob("*/"))], ids=lambda f: getattr(f, "name",
                                                                                                          "tiny"))
def test_the_loaded_model_is_the_one_the_hub_mixin_builds(tiny_weights, folder):
    from medseg_core.models import get_model_class
    from medseg_core.weights import Weights

    folder = folder or tiny_weights
    weights = Weights.read(folder)
    ours = weights.load_model()
    theirs = get_model_class(weights.arch).from_pretrained(folder)
    assert type(ours) is type(theirs) and ours.config == theirs.config and not ours.training
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- one bad folder is one refused model -------------------------------------------------------------------------


@pytest.fixture()
def weights_dir(tiny_weights, tmp_path, monkeypatch):
    """A weights/ folder with one good model and a bad folder of each kind beside it."""
    root = tmp_path / "weights"
    _copy(tiny_weights, root / "good.model")
    nested = _copy(tiny_weights, root / "nested.model")
    (nested / "config.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    latin = _copy(tiny_weights, root / "latin1.model")
    (latin / "config.json").write_bytes(json.dumps(json.loads((tiny_weights / "config.json").read_text()))
                                        .replace('"unet"', '"unet\xe9"').encode("latin-1"))
    huge = _copy(tiny_weights, root / "huge.model")
    (huge / "config.json").write_text(json.dumps({**json.loads((tiny_weights / "config.json").read_text()),
                                                  "intended_use": "x"}) + " " * 2_000_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text((tiny_weights / "config.json").read_text())
    linked = _copy(tiny_weights, root / "linked.model")
    (linked / "config.json").unlink()
    (linked / "config.json").symlink_to(outside / "config.json")
    monkeypatch.setattr(medseg_core.hub, "WEIGHTS_DIR", root)
    return root


def test_a_bad_weights_folder_is_one_refused_model(weights_dir):
    assert list_local_weights(weights_dir) == ["good.model"]
    refused = scan_local_weights(weights_dir).refused
    assert sorted(refused) == ["huge.model", "latin1.model", "linked.model", "nested.model"]
    assert refused["nested.model"] == "nested.model: config.json is nested too deeply"
    assert "is not UTF-8 text" in refused["latin1.model"]
    assert "larger than 1 MB" in refused["huge.model"]
    assert "config.json leaves the weights folder" in refused["linked.model"]
    with pytest.raises(UnsafeWeightsError, match="nested too deeply"):
        Segmenter.from_pretrained(weights_dir / "nested.model", device="cpu")
    assert Segmenter.from_pretrained("good.model", device="cpu")(np.zeros((32, 40, 3), np.uint8)).mask.shape == (32,
                                                                                                                  40)


def test_the_app_starts_and_serves_the_good_model_beside_a_refused_one(weights_dir, tmp_path, monkeypatch):
    import gradio as gr

    from medseg_core import webapp

    monkeypatch.setattr(webapp, "OUTPUT_DIR", tmp_path / "outputs")
    monkeypatch.delenv("MEDSEG_HUB_MODELS", raising=False)
    webapp.get_segmenter.cache_clear()
    try:
        assert webapp.available_models() == ["good.model"]
        note = webapp.refused_note(webapp.refused_models())
        assert "`nested.model`: config.json is nested too deeply" in note and str(tmp_path) not in note
        demo = webapp.build_demo()
        shown = [b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "refused-models"]
        assert shown and "nested.model" in shown[0]
        assert webapp.segment(str(EXAMPLES[0]), "good.model", False, True)[4]["model"] == "good.model"
        with pytest.raises(gr.Error, match="Model 'nested.model' was refused: nested.model: config.json is nested "
                                           "too deeply"):
            webapp.segment(str(EXAMPLES[0]), "nested.model", False, True)
        # A bad folder that appears while the app runs: that model is refused, the good one keeps working.
        shutil.copytree(weights_dir / "nested.model", weights_dir / "late.model")
        assert webapp.available_models() == ["good.model"] and "late.model" in webapp.refused_models()
        assert webapp.segment(str(EXAMPLES[0]), "good.model", False, True)[4]["model"] == "good.model"
    finally:
        webapp.get_segmenter.cache_clear()


# ---- realpath before confinement -----------------------------------------------------------------------------------


def test_a_refiner_folder_linked_from_elsewhere_is_refused(tiny_weights, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere"
    create_model("refiner", widths=[8, 16], input_size=32).save_pretrained(outside)
    folder = _copy(tiny_weights, tmp_path / "weights" / "with.refiner", postprocess=["refine"], refiner="refiner")
    (folder / "refiner").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeWeightsError, match="the refiner folder 'refiner' leaves the weights folder"):
        Segmenter.from_pretrained(folder, device="cpu")
    with pytest.raises(UnsafeWeightsError, match="leaves the weights folder"):
        medseg_core.hub.recorded_postprocess(folder)
    assert "with.refiner" in scan_local_weights(tmp_path / "weights").refused
    # A refiner kept inside the folder (a real sub-folder) is used.
    (folder / "refiner").unlink()
    shutil.copytree(outside, folder / "refiner")
    segmenter = Segmenter.from_pretrained(folder, device="cpu")
    assert segmenter.refiner is not None and segmenter.refiner.arch == "refiner"


def test_hub_cache_links_into_blobs_stay_inside_the_repo(tiny_weights, tmp_path):
    """The Hugging Face cache keeps a snapshot's files as links into the repo's blobs/: those resolve inside the
    repo's cache folder, and are read; a link out of it is refused."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--medseg--tiny-unet"
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(("config.json", "model.safetensors")):
        shutil.copy(tiny_weights / f, blobs / f"blob{i}")
        (snapshot / f).symlink_to(os.path.relpath(blobs / f"blob{i}", snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert medseg_core.hub.resolve_hub("medseg/tiny-unet", cache_dir=tmp_path / "cache").load_model().arch == "unet"
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(tiny_weights / "model.safetensors")
    with pytest.raises(UnsafeWeightsError, match="model.safetensors leaves the weights folder"):
        medseg_core.hub.resolve_hub("medseg/tiny-unet", cache_dir=tmp_path / "cache")


# ---- exported graphs -----------------------------------------------------------------------------------------------


def _graph(output_shape, declared=None, slice_to=None):
    """A tiny ONNX graph that ignores its (N, 3, 64, 64) input and returns zeros of ``output_shape`` (optionally
    sliced down to ``slice_to``): what a hostile model.onnx can do in a few hundred bytes."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big" if slice_to else "logits"])]
    inits = [helper.make_tensor("shape", TensorProto.INT64, [4], output_shape)]
    if slice_to:
        nodes.append(helper.make_node("Slice", ["big", "starts", "ends"], ["logits"]))
        inits += [helper.make_tensor("starts", TensorProto.INT64, [4], [0, 0, 0, 0]),
                  helper.make_tensor("ends", TensorProto.INT64, [4], slice_to)]
    graph = helper.make_graph(nodes, "hostile",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, declared)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(("graph", "reason"), [
    (dict(output_shape=[1, 1, 20000, 20000]), "computes an output of shape [1, 1, 20000, 20000] for one image; the "
                                              "config says [1, 1, 64, 64]"),
    (dict(output_shape=[1, 1, 64, 64], declared=[1, 5, 64, 64]), "declares an output of shape [1, 5, 64, 64]"),
    (dict(output_shape=[1, 1, 20000, 20000], slice_to=[1, 1, 64, 64]), "computes a tensor of shape [1, 1, 20000, "
                                                                       "20000]"),
])
def test_an_exported_graph_that_does_not_follow_from_the_config_is_refused_before_it_runs(
        tiny_weights, tmp_path, monkeypatch, graph, reason):
    ort = pytest.importorskip("onnxruntime")
    folder = _copy(tiny_weights, tmp_path / "hostile.onnx")
    (folder / "model.onnx").write_bytes(_graph(**graph))
    assert (folder / "model.onnx").stat().st_size < 400
    sessions = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: sessions.append(a) or pytest.fail("ran"))
    with pytest.raises(UnsafeWeightsError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        Segmenter.from_pretrained(folder, device="cpu")  # backend "auto" picks model.onnx
    assert sessions == []


def test_a_real_export_passes_the_graph_check(tiny_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    from medseg_core.backends import check_onnx_graph
    from medseg_core.export import export_onnx

    path = export_onnx(tiny_weights, tmp_path / "exported")
    check_onnx_graph(path, 3, 1, 64)
    with pytest.raises(UnsafeWeightsError, match=r"takes an input of shape \['batch', 3, 64, 64\]; the config says "
                                                 r"\(N, 3, 96, 96\)"):
        check_onnx_graph(path, 3, 1, 96)
    assert Segmenter.from_pretrained(tmp_path / "exported", device="cpu").backend.name == "onnxruntime"


# ---- the commands ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"input_size": 2816}, {"std": [0, 0, 0]}, "nested"])
def test_refused_weights_are_one_line_and_status_2_at_the_commands(tiny_weights, tmp_path, capsys, change):
    folder = _copy(tiny_weights, tmp_path / "refused.model", **(change if isinstance(change, dict) else {}))
    if change == "nested":
        (folder / "config.json").write_text("[" * 200_000)
    assert commands.segment([str(EXAMPLES[0]), "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"medseg-segment: error: {folder}: ") and "UnsafeWeightsError" not in lines[0]
    assert "--debug" not in lines[0]
