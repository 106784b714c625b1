"""DynaSiam: every view matters, DFI fuses with input-dependent convex weights, the encoder split is exact, and the
model runs through Segmenter with its views built for it."""

import cv2
import numpy as np
import pytest
import torch

from medseg_core import Segmenter
from medseg_core.enhance import VIEWS, stack_views
from medseg_core.models import get_model_class, get_model_info
from medseg_core.models.dynasiam import DynamicFeatureInteraction, DynaSiam, split_encoder_stages
from medseg_core.models.encoders import create_encoder
from medseg_core.transforms import TDCViews, eval_transform, train_transform

TINY = {"encoder": "tf_efficientnet_lite0", "encoder_weights": "random", "decoder_channels": [16, 16, 16, 16, 8],
        "input_size": 64, "dfi_reduction": 16}


def tiny_dynasiam(**extra) -> DynaSiam:
    """A tiny DynaSiam with random weights."""
    torch.manual_seed(0)
    return DynaSiam(**{**TINY, **extra})


def _randomise_gates(model: torch.nn.Module) -> None:
    # DFI gates start at zero (plain averaging); give them weights, as training would.
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, DynamicFeatureInteraction):
            for p in m.parameters():
                torch.nn.init.normal_(p, std=0.3)


def test_registered_with_views_in_its_metadata():
    assert get_model_class("dynasiam") is DynaSiam
    info = get_model_info("dynasiam")
    assert info.views == VIEWS and info.default_encoder == "tf_efficientnet_lite0"
    model = tiny_dynasiam()
    assert model.views == VIEWS and model.in_channels == 12
    assert model.config["views"] == list(VIEWS) and model.preprocessing["views"] == list(VIEWS)


@pytest.mark.parametrize("dfi", [True, False])
def test_zeroing_any_view_changes_the_output(dfi):
    model = tiny_dynasiam(dfi=dfi).eval()
    if dfi:
        _randomise_gates(model)
    x = torch.randn(2, 12, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (2, 1, 64, 64)
        for v in range(4):
            zeroed = x.clone()
            zeroed[:, 3 * v: 3 * v + 3] = 0
            assert not torch.allclose(model(zeroed), ref, atol=1e-5), f"view {VIEWS[v]} is ignored"


def test_dfi_false_has_no_gates_and_trains():
    plain, dynamic = tiny_dynasiam(dfi=False), tiny_dynasiam(dfi=True)
    assert not any(isinstance(m, DynamicFeatureInteraction) for m in plain.modules())
    assert sum(isinstance(m, DynamicFeatureInteraction) for m in dynamic.modules()) == 5
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in dynamic.parameters())
    plain.train()
    out = plain(torch.randn(2, 12, 64, 96))
    out.mean().backward()
    assert all(p.grad is not None for p in plain.dependent.parameters())


def test_untrained_dfi_averages_like_the_ablation():
    x = torch.randn(2, 12, 64, 64)
    with torch.no_grad():
        a = tiny_dynasiam(dfi=True).eval()
        b = tiny_dynasiam(dfi=False).eval()
        b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("fusion.")})
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_dfi_weights_are_convex_and_input_dependent():
    dfi = DynamicFeatureInteraction(channels=8, num_views=3)
    torch.nn.init.normal_(dfi.channel_gate[-1].weight, std=0.5)
    torch.nn.init.normal_(dfi.spatial_gate.weight, std=0.5)
    a, b = torch.randn(2, 3, 8, 5, 6), torch.randn(2, 3, 8, 5, 6)
    wa, wb = dfi.view_weights(a), dfi.view_weights(b)
    assert wa.shape == (2, 3, 8, 5, 6) and (wa >= 0).all()
    assert torch.allclose(wa.sum(dim=1), torch.ones(2, 8, 5, 6), atol=1e-5)
    assert not torch.allclose(wa, wb), "the weights must depend on the input"
    same = a[:, :1].expand(-1, 3, -1, -1, -1)
    assert torch.allclose(dfi(same), a[:, 0], atol=1e-5)  # a convex mix of identical views is that view
    with pytest.raises(ValueError, match="expected 3 views"):
        dfi(torch.randn(1, 2, 8, 4, 4))


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_stage_split_reproduces_the_encoder(name):
    encoder = create_encoder(name, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, y, got = encoder(x), x, []
        for stage in split_encoder_stages(encoder):
            y = stage(y)
            got.append(y)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_dependent_encoders_are_per_view_and_deep_stages_shared():
    model = tiny_dynasiam(dependent_stages=3)
    assert len(model.dependent) == 4 and all(len(d) == 3 for d in model.dependent) and len(model.shared) == 2
    first = [dict(d.named_parameters()) for d in model.dependent]
    for key in first[0]:
        assert len({id(p[key]) for p in first}) == 4  # separate tensors per view
    with torch.no_grad():
        model.dependent[1][0][0].weight.add_(1.0)
    assert not torch.equal(model.dependent[0][0][0].weight, model.dependent[1][0][0].weight)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="views"):
        tiny_dynasiam(views=["original", "sharp"])
    with pytest.raises(ValueError, match="views"):
        tiny_dynasiam(views=["original", "original"])
    with pytest.raises(ValueError, match="in_channels"):
        tiny_dynasiam(in_channels=3)
    with pytest.raises(ValueError, match="dependent_stages"):
        tiny_dynasiam(dependent_stages=5)
    with pytest.raises(ValueError, match="channels"):
        tiny_dynasiam().eval()(torch.randn(1, 3, 64, 64))


def test_two_views_and_explicit_in_channels():
    model = tiny_dynasiam(views=["original", "color"], in_channels=6).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 6, 64, 64)).shape == (1, 1, 64, 64)


def test_transforms_stack_the_views_after_augmentation(example_image, example_mask):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = eval_transform(64, mean, std, VIEWS)(image=example_image, mask=example_mask)
    resized = cv2.resize(example_image, (64, 64), interpolation=cv2.INTER_LINEAR)
    expected = (stack_views(resized, VIEWS).astype(np.float32) / 255 - 0.5) / 0.25
    assert out["image"].shape == (12, 64, 64)
    assert np.allclose(out["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    train = train_transform(64, mean, std, 1.0, VIEWS)
    assert any(isinstance(t, TDCViews) for t in train.transforms)
    assert train(image=example_image, mask=example_mask)["image"].shape == (12, 64, 64)
    assert eval_transform(64, mean, std)(image=example_image, mask=example_mask)["image"].shape == (3, 64, 64)


def test_segmenter_builds_the_views_and_returns_a_full_size_mask(example_image, tmp_path):
    model = tiny_dynasiam()
    seg = Segmenter(model, device="cpu")
    x = seg._to_tensor(example_image)
    assert x.shape == (1, 12, 64, 64)
    resized = cv2.resize(example_image, (64, 64), interpolation=cv2.INTER_AREA)
    texture = (stack_views(resized, ["texture"]).astype(np.float32) - 127.5) / 127.5  # lite0: mean = std = 0.5
    assert np.allclose(x[0, 3:6].permute(1, 2, 0).numpy(), texture, atol=1e-4)
    result = seg(example_image, tta=True)
    assert result.mask.shape == example_image.shape[:2] and result.mask.dtype == np.uint8
    assert result.probs.shape == (2, *example_image.shape[:2])
    # The views travel in config.json, so a saved model predicts the same through from_pretrained.
    model.save_pretrained(tmp_path)
    again = Segmenter.from_pretrained(tmp_path, device="cpu")
    assert again.model.views == VIEWS
    assert np.allclose(again.predict_probs(example_image)[0], seg.predict_probs(example_image)[0], atol=1e-6)
