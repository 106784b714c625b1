"""SSFormer: one output, in training mode too."""

import torch
from test_models import tiny


def test_ssformer_has_a_single_output_in_training_mode():
    model = tiny("ssformer").train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)
