"""The blocks shared by several models (medseg_core/models/layers.py)."""

import pytest
import torch

from medseg_core.models.layers import ASPP, pick_stages


def test_aspp_trains_on_a_batch_of_one():
    aspp = ASPP(8, 12, rates=(1, 2)).train()
    out = aspp(torch.randn(1, 8, 5, 7))
    assert out.shape == (1, 12, 5, 7)
    out.mean().backward()


def test_pick_stages():
    assert pick_stages([2, 4, 8, 16, 32], (8, 16, 32)) == [2, 3, 4]
    assert pick_stages([4, 8, 16, 32], (32, 4)) == [3, 0]
    with pytest.raises(ValueError, match="stride"):
        pick_stages([4, 8, 16], (4, 8, 16, 32))
