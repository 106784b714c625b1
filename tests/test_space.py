"""A Hugging Face Space's build, from the repository's files alone: the Space installs requirements.txt into an empty
folder before the repository is there, refuses plain git files over 10 MB (weights go through LFS), and reads the
README's front matter for the SDK, its version, the app file and the Python version."""

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest
import yaml
from conftest import ROOT

LFS_LIMIT = 10 * 1024 * 1024  # bytes; the Hub's limit for a file outside LFS


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _pins() -> dict[str, str]:
    return {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in _requirements()}


def _front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md has no front matter (the Space's configuration)"
    return yaml.safe_load(match.group(1))


def test_requirements_name_no_local_path_and_pin_everything():
    for line in _requirements():
        assert not line.startswith(("-e", "--editable", ".", "/", "file:", "-r", "-c")), f"local path or option: {line}"
        assert " @ " not in line and "://" not in line, f"a direct reference: {line}"
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[\w,-]+\])?==[\w.+-]+", line), f"not pinned: {line}"


def test_requirements_install_from_an_empty_folder(tmp_path):
    """pip resolves requirements.txt copied alone into an empty folder (offline: against this environment, which must
    hold every pin; ``-e .`` or any local path fails here as it fails on a Space)."""
    missing = []
    for name, pinned in _pins().items():
        try:
            if version(re.sub(r"\[.*\]", "", name)) != pinned:
                missing.append(f"{name}=={pinned}")
        except PackageNotFoundError:
            missing.append(f"{name}=={pinned}")
    if missing:
        pytest.skip(f"this environment lacks pins (pip install -r requirements.txt): {missing[:5]}")
    (tmp_path / "requirements.txt").write_text((ROOT / "requirements.txt").read_text())
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet", "-r",
                           "requirements.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _lfs_patterns() -> list[str]:
    path = ROOT / ".gitattributes"
    assert path.is_file(), ".gitattributes is missing: weights over 10 MB need LFS rules"
    rules = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [rule[0] for rule in rules if "filter=lfs" in rule[1:]]


def test_gitattributes_sends_weights_through_lfs():
    assert {"*.safetensors", "*.onnx"} <= set(_lfs_patterns())


def test_every_tracked_file_over_10_mb_is_in_lfs():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    large = [name for name in listed.stdout.decode().split("\0")
             if name and (ROOT / name).is_file() and (ROOT / name).stat().st_size > LFS_LIMIT]
    if not large:
        return
    # git's own reading of .gitattributes, so the patterns mean what they will mean on the push.
    attrs = subprocess.run(["git", "check-attr", "filter", "--", *large], cwd=ROOT, capture_output=True, text=True,
                           check=True, timeout=60).stdout.splitlines()
    outside = [line.split(": filter:")[0] for line in attrs if not line.endswith(": filter: lfs")]
    assert not outside, f"files over 10 MB without an LFS rule in .gitattributes: {outside}"


def test_readme_front_matter_describes_a_space_that_builds():
    meta = _front_matter()
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == _pins()["gradio"], "sdk_version must be the gradio pinned in requirements.txt"
    assert (ROOT / meta["app_file"]).is_file(), f"app_file {meta['app_file']} does not exist"
    python = str(meta.get("python_version", ""))
    assert re.fullmatch(r"3\.\d+", python), "python_version is not set (e.g. \"3.11\")"
    required = re.search(r">=\s*3\.(\d+)", (ROOT / "pyproject.toml").read_text()).group(1)
    assert int(python.split(".")[1]) >= int(required), "python_version is older than pyproject's requires-python"

