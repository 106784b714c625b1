"""The console commands as a shell user meets them: exit statuses (0 done, 1 failed, 2 usage error), one line on
stderr for a mistake (the traceback only with --debug), results on stdout, and --help without torch."""

import json
import os
import subprocess
import sys

import pytest
import tomllib
from conftest import EXAMPLES, ROOT

from medseg_core import commands

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
#: The scripts in train/ that are a command under another name.
THIN_SCRIPTS = {"train/train.py": "medseg-train", "train/evaluate.py": "medseg-evaluate",
                "train/soup.py": "medseg-soup"}
HEAVY = ("torch", "gradio", "accelerate", "timm")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def _entry(name: str) -> str:
    """Python that calls console script ``name``'s entry point as its wrapper does, then prints the status and the
    heavy modules that were imported."""
    module, function = SCRIPTS[name].split(":")
    return (f"import sys\nfrom {module} import {function} as entry\ntry:\n    status = entry(sys.argv[1:])\n"
            f"except SystemExit as exit:\n    status = exit.code\n"
            f"print(status, [m for m in {HEAVY!r} if m in sys.modules])\n")


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_every_command_is_declared_and_tested_here():
    assert {"medseg-app", "medseg-train", "medseg-evaluate", "medseg-segment", "medseg-export",
            "medseg-soup"} <= set(SCRIPTS)
    assert all(target.startswith("medseg_core.commands:") for target in SCRIPTS.values())
    untested = sorted(set(SCRIPTS) - set(TYPOS))
    assert not untested, f"add a typo'd flag for {untested} to TYPOS"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_imports_nothing_heavy(name):
    proc = _python(_entry(name), "--help")
    assert proc.returncode == 0, proc.stderr
    usage, status_line = proc.stdout.split("\n")[0], proc.stdout.strip().splitlines()[-1]
    assert usage.startswith(f"usage: {name}") and "--debug" in proc.stdout
    assert status_line == "0 []", f"--help imported {status_line}"


@pytest.mark.parametrize("script", sorted(THIN_SCRIPTS))
def test_thin_scripts_are_the_commands(script):
    code = ("import runpy, sys\ntry:\n    runpy.run_path(sys.argv[1], run_name='__main__')\n"
            f"except SystemExit as exit:\n    print(exit.code, [m for m in {HEAVY!r} if m in sys.modules])\n")
    proc = _python(code, str(ROOT / script), "--help")
    assert proc.stdout.strip().splitlines()[-1] == "0 []" and "--debug" in proc.stdout, proc.stdout + proc.stderr
    typo = _python(code, str(ROOT / script), "--no-such-flag")
    assert typo.stdout.strip() == "2 []"
    assert _one_line(typo.stderr).startswith(f"{THIN_SCRIPTS[script]}: error: ")


# A typo'd flag for each command (close to one of its own) and what the message should suggest.
TYPOS = {
    "medseg-app": (["--prot", "7861"], "--port"),
    "medseg-train": (["--config", "train/configs/unet_lite0_polyp.yaml", "--max-stpes", "2"], "--max-steps"),
    "medseg-evaluate": (["--model", "x", "--images", "examples", "--masks", "examples", "--limt", "1"], "--limit"),
    "medseg-segment": (["examples", "--out", "{tmp}/x", "--ttta"], "--tta"),
    "medseg-export": (["--model", "x", "--opset", "18", "--jsn", "{tmp}/x.json"], "--json"),
    "medseg-soup": (["--models", "x", "--output", "{tmp}/y", "--fp61"], "--fp16"),
    "medseg-calibrate": (["--model", "x", "--split", "polyp-val", "--specifity", "0.9"], "--specificity"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_typo_is_a_one_line_usage_error_that_says_what_was_meant(name, tmp_path):
    if name not in TYPOS:
        pytest.fail(f"add a typo'd flag for {name} to TYPOS")
    argv, meant = TYPOS[name]
    proc = _python(_entry(name), *(a.format(tmp=tmp_path) for a in argv))
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr  # before anything heavy is imported
    line = _one_line(proc.stderr)
    assert line.startswith(f"{name}: error: unrecognized arguments:") and f"did you mean {meant}?" in line


# A file that does not exist, where the check needs no model (the others are below, in-process).
MISSING = {
    "medseg-train": (["--config", "nothere.yaml"], "--config nothere.yaml does not exist"),
    "medseg-evaluate": (["--model", "x", "--images", "nothere", "--masks", "examples"], "--images nothere does not"),
    "medseg-segment": (["nothere.jpg", "--out", "{tmp}/x"], "nothere.jpg does not exist"),
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_a_missing_file_is_a_one_line_usage_error(name, tmp_path):
    argv, said = MISSING[name]
    proc = _python(_entry(name), *(a.format(tmp=tmp_path) for a in argv))
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert said in _one_line(proc.stderr)


def test_a_bad_flag_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.evaluate(["--model", "x", "--images", "examples", "--masks", "examples", "--threshold", "2"])
    assert exit_info.value.code == 2
    assert "2 is not a probability from 0 to 1" in _one_line(capsys.readouterr().err)


def test_evaluate_exits_0_with_the_table_on_stdout(tiny_weights, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert commands.evaluate(["--model", str(tiny_weights), "--images", str(ROOT / "examples"), "--masks",
                              str(ROOT / "examples"), "--limit", "1", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split()[:3] == ["split", "n", "dice"] and "per_image" not in captured.err
    assert json.loads(out.read_text())["n"] == 1


def test_evaluate_unknown_split_and_model_are_usage_errors(tiny_weights, tmp_path, capsys):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test-polypgen.txt").write_text("polypgen/x\n")
    assert commands.evaluate(["--model", str(tiny_weights), "--data", str(tmp_path), "--split", "test-polypgn"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("medseg-evaluate: error: no split file") and "known splits: test-polypgen" in line
    assert commands.evaluate(["--model", "unet_lite2.polpy", "--images", str(ROOT / "examples"), "--masks",
                              str(ROOT / "examples")]) == 2
    assert "'unet_lite2.polpy' is neither a folder" in _one_line(capsys.readouterr().err)


def test_segment_exit_statuses(tiny_weights, tmp_path, capsys):
    assert commands.segment([str(EXAMPLES[0]), "--model", str(tiny_weights), "--out", str(tmp_path / "ok"),
                             "--no-progress"]) == 0
    assert (tmp_path / "ok" / "statistics.csv").read_text().count(",ok,") == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert commands.segment([str(bad), "--model", str(tiny_weights), "--out", str(tmp_path / "bad"),
                             "--no-progress"]) == 1  # nothing could be segmented: a failure, not a usage error
    capsys.readouterr()
    assert commands.segment([str(EXAMPLES[0]), "--model", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "'no-such-model' is neither a folder" in _one_line(capsys.readouterr().err)


def test_export_exit_statuses_and_debug(tiny_weights, tmp_path, capsys):
    pytest.importorskip("onnx")
    assert commands.export(["--model", str(tiny_weights), "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    capsys.readouterr()
    assert commands.export(["--model", "nothere", "--out", str(tmp_path / "x")]) == 2
    assert "'nothere' is neither a folder" in _one_line(capsys.readouterr().err)
    assert commands.export(["--model", "nothere", "--out", str(tmp_path / "x"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "WeightsNotFoundError" in err and "medseg-export: error:" in err


def test_soup_exit_statuses(tiny_weights, tmp_path, capsys):
    assert commands.soup(["--models", str(tiny_weights), str(tiny_weights), "--output", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith("uniform soup of 2")
    assert commands.soup(["--models", str(tiny_weights), "nothere", "--output", str(tmp_path / "t")]) == 2
    assert "'nothere' is neither a folder" in _one_line(capsys.readouterr().err)


def test_train_exit_statuses(tmp_path, capsys):
    """A two-step run on a data folder made of the example images; a recipe mistake is a usage error."""
    data = tmp_path / "data"
    (data / "ex" / "images").mkdir(parents=True)
    (data / "ex" / "masks").mkdir()
    (data / "splits").mkdir()
    for p in EXAMPLES:
        (data / "ex" / "images" / p.name).write_bytes(p.read_bytes())
        (data / "ex" / "masks" / f"{p.stem}_mask.png").write_bytes(p.with_name(p.stem + "_mask.png").read_bytes())
    ids = "\n".join(f"ex/{p.stem}" for p in EXAMPLES)
    (data / "splits" / "polyp-train.txt").write_text(ids)
    (data / "splits" / "polyp-val.txt").write_text(ids)
    tiny = ["--config", str(ROOT / "train" / "configs" / "unet_lite0_polyp.yaml"), "--output-dir", str(tmp_path / "r"),
            "--max-steps", "1", "--no-progress", "--data.root", str(data), "--data.cache_max_side", "96",
            "--train.batch_size", "2", "--model.input_size", "64", "--model.decoder_channels", "[16, 16, 16, 16, 8]",
            "--model.encoder_weights", "random"]
    assert commands.train(tiny) == 0
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()
    capsys.readouterr()
    assert commands.train([*tiny, "--train.epoch", "2"]) == 2
    assert "did you mean epochs" in _one_line(capsys.readouterr().err)


def test_app_serves_and_stops(monkeypatch):
    from medseg_core import webapp

    served = []
    monkeypatch.setattr(webapp, "launch", lambda demo, host, port: served.append((host, port)))
    assert commands.app(["--port", "7999"]) == 0 and served == [(None, 7999)]


def test_an_unexpected_error_is_one_line_and_status_1(monkeypatch, tiny_weights, tmp_path, capsys):
    from medseg_core import batch

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(batch, "segment_files", broken)
    assert commands.segment([str(EXAMPLES[0]), "--model", str(tiny_weights), "--out", str(tmp_path)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == "medseg-segment: error: RuntimeError: disk on fire (run again with --debug for the traceback)"
