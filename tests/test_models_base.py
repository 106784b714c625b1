"""The encoder-decoder base: an architecture that only assembles an encoder, a decoder and a head gets the
normalisation, the timm encoder, ``forward`` (resizing, deep supervision, the presence gate) and the hub from
``SegModel``."""

import pytest
import torch
import torch.nn as nn

from medseg_core.models import SegModel, create_model
from medseg_core.models.base import IMAGENET_MEAN, IMAGENET_STD


class LastFeature(nn.Module):
    """A decoder that keeps the deepest feature map (stride 32)."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[-1]


class Assembled(SegModel):
    """Encoder by name, a decoder and a head: no forward of its own."""

    def __init__(self, num_classes: int = 1, side_outputs: bool = False, presence: float | None = None) -> None:
        super().__init__(num_classes, 64, encoder="tf_efficientnet_lite0", encoder_weights="random")
        width = self.encoder.feature_info.channels()[-1]
        self.decoder = LastFeature()
        self.head = nn.Conv2d(width, num_classes, 1)
        self.side_outputs = side_outputs
        if presence is not None:  # a presence head that always answers ``presence`` (a logit)
            self.classifier = nn.Sequential(nn.Conv2d(width, 1, 1), nn.AdaptiveMaxPool2d(1))
            nn.init.zeros_(self.classifier[0].weight)
            nn.init.constant_(self.classifier[0].bias, presence)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        main = super().decode(features)
        return [main, main * 2] if self.side_outputs else main


def test_an_assembled_model_gets_the_encoder_normalisation_and_a_full_size_forward():
    model = Assembled().eval()
    assert (model.mean, model.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # EfficientNet-Lite's, from timm
    assert model.encoder.feature_info.reduction()[-1] == 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 1, 64, 96)


def test_side_outputs_come_back_only_in_training_with_deep_supervision():
    model = Assembled(side_outputs=True)
    x = torch.randn(2, 3, 64, 64)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and [o.shape[-1] for o in outputs] == [64, 2]  # main resized, side as is
    assert isinstance(model.eval()(x), torch.Tensor)
    model.deep_supervision = False
    assert isinstance(model.train()(x), torch.Tensor)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_a_presence_head_gates_every_output(num_classes):
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    sure = Assembled(num_classes, side_outputs=True, presence=30.0)
    torch.manual_seed(0)
    absent = Assembled(num_classes, side_outputs=True, presence=-30.0)
    for got_sure, got_absent in zip(sure.train()(x), absent.train()(x)):
        fg = (lambda t: t.sigmoid()) if num_classes == 1 else (lambda t: 1 - t.softmax(1)[:, :1])
        assert fg(got_absent).max() < 1e-6 < fg(got_sure).max()


@pytest.mark.parametrize("name", ["aspp_net", "ddanet", "fct", "refiner"])
def test_models_without_a_timm_encoder_default_to_imagenet_statistics(name):
    kwargs = {"fct": {"channels": [4, 8, 8, 16, 16]}}.get(name, {"widths": [8, 16, 16]})
    model = create_model(name, **kwargs)
    assert (model.mean, model.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert create_model(name, **kwargs, mean=[0.1, 0.2, 0.3]).mean == (0.1, 0.2, 0.3)


def test_the_encoder_arguments_reach_create_encoder():
    model = create_model("deeplabv3plus", encoder="tf_efficientnet_lite0", encoder_weights="random", output_stride=8,
                         aspp_channels=8, low_level_channels=8)
    assert model.encoder.feature_info.reduction()[-1] == 8
    with pytest.raises(ValueError, match="encoder_weights"):
        create_model("unet", encoder="tf_efficientnet_lite0", encoder_weights="none")
