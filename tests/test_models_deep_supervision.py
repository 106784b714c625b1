"""Deep supervision across models: side outputs in training mode only, the main output first, none in eval."""

import pytest
import torch
from test_models import tiny


@pytest.mark.parametrize(("name", "n_outputs"), [("unetplusplus", 4), ("unet3plus", 5)])
def test_deep_supervision_only_in_training(name, n_outputs):
    model = tiny(name)
    x = torch.randn(2, 3, 64, 96)
    model.train()
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == n_outputs
    assert outs[0].shape == (2, 1, 64, 96)
    assert all(o.shape[:2] == (2, 1) and torch.isfinite(o).all() for o in outs)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 96)


@pytest.mark.parametrize("name", ["unetplusplus", "unet3plus"])
def test_deep_supervision_can_be_switched_off(name):
    model = tiny(name, deep_supervision=False).train()
    assert isinstance(model(torch.randn(2, 3, 64, 64)), torch.Tensor)


@pytest.mark.parametrize(
    ("name", "n_outputs", "strides"),
    [("fct", 3, [1, 2, 4]), ("pranet", 4, [1, 16, 32, 8]), ("emcad", 4, [1, 8, 16, 32])],
)
def test_side_outputs_only_in_training_mode(name, n_outputs, strides):
    model = tiny(name, num_classes=2)
    x = torch.randn(2, 3, 64, 96)
    model.train()
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == n_outputs
    assert [o.shape[-2:] for o in outs] == [(64 // s, 96 // s) for s in strides]
    assert all(o.shape[:2] == (2, 2) for o in outs)
    model.eval()
    with torch.no_grad():
        main = model(x)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 2, 64, 96)
