"""Attention U-Net: attention coefficients in [0, 1], one gate per skip, and the gate itself."""

import torch
from test_models import tiny

from medseg_core.models.attention_unet import AttentionGate


def test_attention_coefficients_lie_in_unit_interval():
    model = tiny("attention_unet").eval()
    with torch.no_grad():
        maps = model.attention_maps(torch.randn(2, 3, 64, 96))
    # One gate per skip (strides 16, 8, 4, 2), each at its skip's resolution.
    assert [tuple(a.shape) for a in maps] == [(2, 1, 4, 6), (2, 1, 8, 12), (2, 1, 16, 24), (2, 1, 32, 48)]
    for a in maps:
        assert a.min() >= 0 and a.max() <= 1
        assert a.std() > 0  # the gate varies over the image rather than passing everything


def test_attention_gate_scales_the_skip_by_its_coefficients():
    gate = AttentionGate(skip_ch=6, gate_ch=10, inter_ch=4).eval()
    x, g = torch.randn(2, 6, 16, 12), torch.randn(2, 10, 8, 6)
    with torch.no_grad():
        out, alpha = gate(x, g)
    assert alpha.shape == (2, 1, 16, 12) and out.shape == x.shape
    assert torch.allclose(out, x * alpha)
