"""PraNet: reverse attention refines the coarser predictions."""

import torch
import torch.nn.functional as F
from test_models import tiny

from medseg_core.models.pranet import reverse_attention_weights


def test_pranet_main_output_refines_the_coarser_side_outputs():
    """Each reverse-attention stage adds a residual to the previous prediction: with the residual branches zeroed
    the main output is exactly the partial decoder's map, upsampled."""
    model = tiny("pranet").eval()
    for ra in (model.ra5, model.ra4, model.ra3):
        torch.nn.init.zeros_(ra.head.weight)
        torch.nn.init.zeros_(ra.head.bias)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.encoder(x)
        f3, f4, f5 = (feats[i] for i in model.stages)
        coarse = model.decoder(model.rfb5(f5), model.rfb4(f4), model.rfb3(f3))
        expected = coarse
        for size in (f5.shape[-2:], f4.shape[-2:], f3.shape[-2:], x.shape[-2:]):
            expected = F.interpolate(expected, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected)


def test_reverse_attention_weights():
    logits = torch.tensor([[[[-30.0, 0.0, 30.0]]]])
    torch.testing.assert_close(reverse_attention_weights(logits), torch.tensor([[[[1.0, 0.5, 0.0]]]]))
    three = torch.tensor([[[[5.0]], [[5.0]], [[-40.0]]]])  # background and class 1 equally likely
    torch.testing.assert_close(reverse_attention_weights(three), torch.full((1, 1, 1, 1), 0.5))
