"""Every registered architecture, and every shipped weights folder, still computes what it computed when
``tests/model_outputs.pt`` was recorded: the same state-dict keys and shapes, the same outputs (eval mode, training
mode with its deep-supervision outputs, and the extra methods some models have). A change to the model code that
is meant to alter a model's output rewrites the fixture (``python tests/model_outputs.py --write``) and says why.
"""

import pytest
import torch
from model_outputs import (
    FIXTURE,
    ROOT,
    SHIPPED,
    cases,
    digest,
    fill_by_key,
    keys_digest,
    load_shipped,
    run_case,
    shipped_input,
    tiny_input,
)

from medseg_core.models import create_model, list_models

REFERENCE = torch.load(FIXTURE, weights_only=True)


def _assert_same(got: tuple[list[str], torch.Tensor], expected: tuple[list[str], torch.Tensor]) -> None:
    assert got[0] == expected[0], "the outputs' number or shapes changed"
    # Not bit for bit: another thread count or CPU rounds a convolution's last bits differently, which deep
    # layers amplify to about 1e-4; a change to what a model computes moves these numbers far more.
    torch.testing.assert_close(got[1], expected[1], rtol=1e-3, atol=1e-3)


def test_the_fixture_covers_every_registered_model():
    assert set(REFERENCE["cases"]) == set(cases())
    assert {case.split("/")[0] for case in REFERENCE["cases"]} >= set(list_models())
    assert set(REFERENCE["shipped"]) == set(SHIPPED) == {p.name for p in (ROOT / "weights").iterdir() if p.is_dir()}


@pytest.mark.parametrize("case", sorted(cases()))
def test_tiny_model_outputs_are_unchanged(case):
    arch, kwargs = cases()[case]
    model = create_model(arch, **kwargs)
    fill_by_key(model)
    expected = REFERENCE["cases"][case]
    assert keys_digest(model) == expected["keys"], "the state-dict keys or shapes changed: saved weights would not load"
    _assert_same(digest(run_case(model, tiny_input(model))), expected["outputs"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_strictly_and_give_the_same_logits(name):
    model = load_shipped(name)
    expected = REFERENCE["shipped"][name]
    assert keys_digest(model) == expected["keys"]
    with torch.no_grad():
        logits = model(shipped_input(ROOT / "weights" / name, model))
    _assert_same(digest({"eval": [logits]}), expected["outputs"])
