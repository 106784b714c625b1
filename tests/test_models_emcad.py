"""EMCAD: channel shuffle, the attention gates (LGAG) and the up-convolution block (EUCB)."""

import torch
from test_models import tiny

from medseg_core.models.emcad import EUCB, LGAG, channel_shuffle


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 4).flatten().tolist() == list(range(6))  # groups that don't divide: unchanged


def test_emcad_attention_gates_are_in_unit_interval():
    model = tiny("emcad").eval()
    seen = []
    for gate in model.gates:
        gate.psi.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64) * 10)
    assert len(seen) == 3
    for g in seen:
        assert g.shape[1] == 1 and g.min() >= 0 and g.max() <= 1
    lgag = LGAG(8, 8, 4).eval()
    g, x = torch.randn(2, 8, 5, 7) * 100, torch.randn(2, 8, 5, 7) * 100
    weights = lgag.gate(g, x)
    assert weights.shape == (2, 1, 5, 7) and weights.min() >= 0 and weights.max() <= 1
    torch.testing.assert_close(lgag(g, x), x * weights)


def test_eucb_upsamples_to_the_skip_size():
    up = EUCB(8, 4)
    assert up(torch.randn(1, 8, 3, 5)).shape == (1, 4, 6, 10)
    assert up(torch.randn(1, 8, 3, 5), size=(7, 9)).shape == (1, 4, 7, 9)
