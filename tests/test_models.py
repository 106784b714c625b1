"""Every registered model: build, forward at two sizes, hub round trip, one real optimisation step."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_UNET

from medseg_core import create_model, get_model_info, is_model, list_models, load_model
from medseg_core.losses import build_loss
from medseg_core.models import SegModel, get_model_class
from medseg_core.transforms import eval_transform

# Small settings per architecture, so every test stays fast; a new model adds its line here.
TINY = {
    "unet": TINY_UNET,
    "attention_unet": TINY_UNET,
    "unetplusplus": {**TINY_UNET, "decoder_channels": [16, 16, 8, 8, 8]},
    "unet3plus": {"encoder": "tf_efficientnet_lite0", "encoder_weights": "random", "cat_channels": 8, "input_size": 64},
    "ddanet": {"widths": [8, 16, 16, 32], "input_size": 64},
    "deeplabv3plus": {"encoder": "tf_efficientnet_lite0", "encoder_weights": "random", "aspp_channels": 16,
                      "low_level_channels": 8, "input_size": 64},
    # A 64-px input leaves a 4x4 grid at the bottleneck: small atrous rates.
    "aspp_net": {"widths": [8, 16, 16, 32], "aspp_channels": 16, "atrous_rates": [1, 2, 3], "input_size": 64},
    "emcad": {"encoder": "pvt_v2_b0", "encoder_weights": "random", "kernel_sizes": [1, 3, 5], "input_size": 64},
    "fct": {"channels": [4, 8, 8, 16, 16], "input_size": 64},
    "pranet": {"encoder": "tf_efficientnet_lite0", "encoder_weights": "random", "rfb_channels": 8,
               "ra_channels": [16, 8, 8], "input_size": 64},
    "ssformer": {"encoder": "pvt_v2_b0", "encoder_weights": "random", "decoder_channels": 16, "input_size": 64},
    "dynasiam": {**TINY_UNET, "dfi_reduction": 16},
    "refiner": {"widths": [8, 16, 16], "input_size": 64},
}


def tiny(name: str, **extra) -> SegModel:
    torch.manual_seed(0)
    return create_model(name, **{**TINY[name], **extra})


def test_registry_lists_and_wildcards():
    names = list_models()
    assert "unet" in names and names == sorted(names)
    assert list_models("un*") == [n for n in names if n.startswith("un")]
    assert is_model("unet") and not is_model("not-a-model")
    assert set(TINY) == set(names), "every registered model needs tiny test settings"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="did you mean unet"):
        create_model("unte")


def test_none_kwargs_keep_model_defaults():
    model = create_model("unet", **TINY_UNET, num_classes=None, in_channels=None)
    assert model.num_classes == 1
    assert get_model_info("unet").default_encoder == "tf_efficientnet_lite0"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_forward_shape(name, size, num_classes):
    model = tiny(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, model.in_channels, *size))
    assert out.shape == (2, num_classes, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_hub_round_trip_is_identical(name, tmp_path):
    model = tiny(name, num_classes=3).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["arch"] == name and config["num_classes"] == 3
    assert {"input_size", "mean", "std"} <= set(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for loaded in (get_model_class(name).from_pretrained(tmp_path), load_model(tmp_path)):
        assert not loaded.training
        x = torch.randn(1, model.in_channels, 64, 80)
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))
        assert loaded.config == model.config


def test_load_refuses_mismatched_weights(tmp_path):
    tiny("unet").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["decoder_channels"] = [32, 16, 16, 16, 8]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError):
        load_model(tmp_path)


@pytest.mark.parametrize("name", list_models())
def test_one_step_on_a_real_image_lowers_the_loss(name, example_image, example_mask):
    model = tiny(name)
    # Multi-view models (DynaSiam) read stacked TDC-Enhance views; every other model gets plain RGB.
    views = getattr(model, "views", None)
    t = eval_transform(model.input_size, model.mean, model.std, views)(image=example_image, mask=example_mask)
    x, y = t["image"][None], torch.as_tensor(t["mask"])[None].long()
    if model.in_channels == 4:  # the refiner also reads a coarse lesion probability: a blurred, shrunk mask
        coarse = torch.nn.functional.avg_pool2d(y[:, None].float(), 9, stride=1, padding=4) * 0.8
        x = torch.cat([x, coarse], dim=1)
    assert y.max() == 1
    loss_fn = build_loss("dice_ce", model.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_eval_mode_is_deterministic(tiny_unet):
    tiny_unet.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(tiny_unet(x), tiny_unet(x))


def test_decoder_needs_enough_blocks():
    with pytest.raises(ValueError, match="decoder_channels"):
        create_model("unet", **{**TINY_UNET, "decoder_channels": [16, 16]})


def test_grey_input_channels():
    model = create_model("unet", **{**TINY_UNET, "in_channels": 1}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    assert np.isclose(len(model.mean), 3)  # normalisation stays per RGB channel in the config
