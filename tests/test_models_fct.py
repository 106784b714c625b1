"""FCT: a small default without an encoder, the image pyramid, convolutional attention and Wide-Focus."""

import pytest
import torch
from test_models import tiny

from medseg_core import create_model
from medseg_core.models.fct import ConvAttention, WideFocus


def test_fct_default_is_small_and_runs_without_an_encoder():
    model = create_model("fct").eval()
    assert model.input_size == 224 and model.info.default_encoder is None
    assert sum(p.numel() for p in model.parameters()) < 3e6
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_fct_reads_the_image_pyramid():
    """Stages 2-4 take the input image pooled to their scale: their image convs receive gradients."""
    model = tiny("fct").train()
    out = model(torch.randn(1, 3, 64, 64))[0]
    out.sum().backward()
    for block in model.encoder[1:]:
        grad = block.image_conv[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert model.encoder[0].image_conv is None


@pytest.mark.parametrize("kv_stride", [1, 2])
def test_conv_attention_is_global(kv_stride):
    """One attention layer lets a far pixel change every output position, which no 3x3 conv stack of this depth
    could; with a stride the keys/values are squeezed and the output keeps the input's shape."""
    torch.manual_seed(0)
    attn = ConvAttention(8, num_heads=2, kv_stride=kv_stride).eval()
    x = torch.randn(1, 8, 12, 16)
    y = x.clone()
    y[..., 11, 15] += 5.0
    with torch.no_grad():
        a, b = attn(x), attn(y)
    assert a.shape == x.shape
    assert ((a - b).abs()[0, :, 0, 0] > 0).any()
    with pytest.raises(ValueError, match="heads"):
        ConvAttention(6, num_heads=4)


def test_wide_focus_sums_dilated_branches():
    wf = WideFocus(4, 6, dilations=(1, 2, 3)).eval()
    assert len(wf.branches) == 3 and [b[0].dilation for b in wf.branches] == [(1, 1), (2, 2), (3, 3)]
    assert wf(torch.randn(1, 4, 9, 11)).shape == (1, 6, 9, 11)
