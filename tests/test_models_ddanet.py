"""DDANet: the reconstruction (auxiliary) loss, the grey target, and its residual SE blocks."""

import pytest
import torch
from test_models import TINY, tiny

from medseg_core import create_model
from medseg_core.models.ddanet import ResidualBlock, SEBlock


def test_ddanet_auxiliary_loss_after_training_forward():
    model = tiny("ddanet").train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    aux = model.auxiliary_loss()
    assert isinstance(aux, torch.Tensor) and aux.ndim == 0 and torch.isfinite(aux) and aux > 0
    assert aux.requires_grad
    # It is the MSE between the second decoder's reconstruction and the grey input.
    expected = torch.nn.functional.mse_loss(model.reconstruct(x), model.grey_target(x))
    assert torch.allclose(aux, expected, rtol=1e-5)
    (logits.mean() + aux).backward()
    assert model.grey_head[0].weight.grad is not None and model.grey_head[0].weight.grad.abs().sum() > 0


def test_ddanet_no_auxiliary_loss_in_eval():
    model = tiny("ddanet").train()
    model(torch.randn(1, 3, 64, 64))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert model.auxiliary_loss() is None


def test_ddanet_reconstruction_weight_and_grey_target():
    model = tiny("ddanet", reconstruction_weight=0.0).train()
    model(torch.randn(1, 3, 64, 64))
    assert model.auxiliary_loss().item() == 0.0
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 0] = 1.0  # pure red: BT.601 luma 0.299
    grey = model.grey_target((rgb - mean) / std)
    assert grey.shape == (1, 1, 2, 2) and torch.allclose(grey, torch.full_like(grey, 0.299), atol=1e-6)
    with pytest.raises(ValueError):
        create_model("ddanet", **{**TINY["ddanet"], "reconstruction_weight": -1})


def test_se_block_reweights_channels_in_unit_range():
    se = SEBlock(8, reduction=4)
    x = torch.rand(2, 8, 5, 5) + 0.1
    ratio = se(x) / x
    assert ratio.shape == x.shape
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)  # one weight per channel
    assert (ratio > 0).all() and (ratio < 1).all()


def test_residual_block_shapes_and_shortcut():
    block = ResidualBlock(4, 8, stride=2, se_reduction=4)
    assert block(torch.randn(2, 4, 9, 10)).shape == (2, 8, 5, 5)
    identity = ResidualBlock(8, 8)
    assert isinstance(identity.shortcut, torch.nn.Identity)
