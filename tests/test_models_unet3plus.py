"""UNet 3+: full-scale deep supervision and the classification-guided module."""

import torch
from test_models import tiny

from medseg_core.models.unet3plus import gate_logits


def test_unet3plus_supervises_every_scale():
    outs = tiny("unet3plus").train()(torch.randn(1, 3, 64, 64))
    # Main output at input size, then decoder levels at strides 4, 8, 16 and the bottom stage at 32.
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_gate_logits_binary_scales_foreground_probability():
    logits = torch.randn(2, 1, 5, 5)
    presence = torch.tensor([0.3, -1.2]).view(2, 1, 1, 1)
    gated = gate_logits(logits, presence)
    assert torch.allclose(gated.sigmoid(), logits.sigmoid() * presence.sigmoid(), atol=1e-6)
    absent = gate_logits(logits, torch.full((2, 1, 1, 1), -30.0))
    assert absent.sigmoid().max() < 1e-6


def test_gate_logits_multiclass_keeps_a_distribution():
    logits = torch.randn(2, 3, 4, 4)
    presence = torch.tensor([2.0, -0.5]).view(2, 1, 1, 1)
    probs = gate_logits(logits, presence).softmax(1)
    expected_fg = logits.softmax(1)[:, 1:] * presence.sigmoid()
    assert torch.allclose(probs[:, 1:], expected_fg, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 4, 4), atol=1e-6)


def test_unet3plus_cgm_gates_every_output():
    model = tiny("unet3plus", cgm=True, num_classes=3)
    with torch.no_grad():
        # A strongly negative presence bias: the classifier calls every image empty, so no foreground survives.
        model.classifier[1].bias.fill_(-40.0)
        model.classifier[1].weight.zero_()
    outs = model.train()(torch.randn(2, 3, 64, 64))
    assert len(outs) == 5
    for out in outs:
        assert out.softmax(1)[:, 0].min() > 0.999
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).argmax(1).max() == 0
