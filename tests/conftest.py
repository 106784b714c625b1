"""Shared fixtures: the real datasets beside the repository, tiny models, and example images."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MEDSEG_DATA", ROOT.parent / "shared" / "data"))
EXAMPLES = sorted((ROOT / "examples").glob("polypgen_*.jpg"))  # with ground-truth masks beside them

# No test may reach the network: huggingface_hub answers from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Two threads on CI's two cores; OMP_NUM_THREADS=1 when the cores are busy with something else.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))

TINY_UNET = {"encoder": "tf_efficientnet_lite0", "encoder_weights": "random", "decoder_channels": [16, 16, 16, 16, 8],
             "input_size": 64}


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "splits").is_dir():
        pytest.skip(f"the shared datasets are not at {DATA_ROOT} (set MEDSEG_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def example_image() -> np.ndarray:
    from medseg_core.io import read_image

    return read_image(EXAMPLES[0])


@pytest.fixture(scope="session")
def example_mask() -> np.ndarray:
    from medseg_core.io import read_mask

    return read_mask(EXAMPLES[0].with_name(EXAMPLES[0].stem + "_mask.png"))


@pytest.fixture()
def tiny_unet():
    from medseg_core import create_model

    torch.manual_seed(0)
    return create_model("unet", **TINY_UNET)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny saved model folder (random weights) shaped like a shipped one."""
    from medseg_core import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights") / "tiny_unet.test"
    create_model("unet", **TINY_UNET).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_3class(tmp_path_factory) -> Path:
    """A tiny saved 3-class model folder (random weights) with the NeoPolyp label schema; tests that write into
    it copy it first."""
    from medseg_core import create_model
    from medseg_core.labels import BKAI_NEOPOLYP

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights") / "tiny_unet.neopolyp"
    create_model("unet", **{**TINY_UNET, "num_classes": 3}).save_pretrained(folder, config=BKAI_NEOPOLYP.to_config())
    return folder


def load_script(script: str) -> SimpleNamespace:
    """A repository script (``studies/...``, ``bench/...``, ``train/...``) imported as a module, so that a test calls
    its ``main(argv)`` in-process."""
    path = ROOT / script
    return SimpleNamespace(**runpy.run_path(str(path), run_name=f"_script_{path.parent.name}_{path.stem}"))


def run_main(script: str, *args: Any, expect: int = 0) -> subprocess.CompletedProcess:
    """Call a repository script's ``main(argv)`` in this process, as :func:`run_script` runs it in another: its
    stdout, and its stderr with the log lines, as text; the exit status its ``SystemExit`` gives (a message: 1)."""
    module = load_script(script)
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                module.main([str(a) for a in args])
                status = 0
            except SystemExit as exit_:
                status = exit_.code if exit_.code is None or isinstance(exit_.code, int) else 1
                if not isinstance(exit_.code, (int, type(None))):
                    print(exit_.code, file=sys.stderr)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    status = status or 0
    assert status == expect, f"{script}: exit {status}\n{out.getvalue()[-2000:]}\n{err.getvalue()[-3000:]}"
    return subprocess.CompletedProcess([script, *map(str, args)], status, out.getvalue(), err.getvalue())


def run_script(script: str | Path, *args: Any, timeout: float = 600, expect: int = 0) -> subprocess.CompletedProcess:
    """Run a repository script in another process, as a user would, with this interpreter (for a script that must
    run as its own process, e.g. one that starts and stops others); assert its exit status and return the finished
    process (stdout and stderr as text). Prefer :func:`run_main`."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == expect, f"{script}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc
