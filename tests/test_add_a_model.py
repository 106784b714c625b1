"""docs/architecture.md, "How to add a model": an architecture defined and registered in one file (this one) is
built by name, trained for two steps by the real training loop, saved, reloaded and served, with no other file
touched."""

import json
from collections.abc import Sequence

import pytest
import torch
import torch.nn as nn
from conftest import EXAMPLES, ROOT

from medseg_core import Segmenter, create_model, list_models, load_model, training
from medseg_core.batch import segment_files
from medseg_core.models import ModelInfo, SegModel, register_model, registry


class TinyNet(SegModel):
    """Step 1: a SegModel subclass whose constructor takes plain JSON values (the preprocessing included) and a
    ModelInfo."""

    info = ModelInfo(paper="a two-layer example network", input_size=64)

    def __init__(self, in_channels: int = 3, num_classes: int = 1, width: int = 8, input_size: int = 64,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)) -> None:
        super().__init__(num_classes, input_size, mean, std, in_channels)
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture()
def tiny_net():
    """Step 2: register it by name (in a real module: ``@register_model("tiny_net")`` on the class). Removed again
    afterwards so that the registry-wide tests of this session do not see it."""
    register_model("tiny_net")(TinyNet)
    yield "tiny_net"
    del registry._MODELS["tiny_net"]


def test_a_model_in_one_file_trains_saves_reloads_and_serves(tiny_net, data_root, tmp_path, example_image):
    assert tiny_net in list_models()
    assert create_model(tiny_net, width=4)(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    # Step 3: train it with any recipe, naming the architecture.
    model_dir = training.main([
        "--config", str(ROOT / "train/configs/unet_lite0_polyp.yaml"), "--output-dir", str(tmp_path / "run"),
        "--max-steps", "2", "--no-progress", "--data.root", str(data_root), "--data.cache_max_side", "96",
        "--train.max_train_samples", "4", "--train.max_val_samples", "2", "--train.batch_size", "2",
        "--model", "{arch: tiny_net, num_classes: 1, width: 8, input_size: 64}",
    ])
    # Step 4: it saved as safetensors + config.json and reloads by its registry name.
    config = json.loads((model_dir / "config.json").read_text())
    assert config["arch"] == "tiny_net" and config["width"] == 8 and (model_dir / "model.safetensors").is_file()
    reloaded = load_model(model_dir)
    assert isinstance(reloaded, TinyNet)
    # Step 5: it serves through the one inference path: Segmenter, the batch engine (and so the app and the CLI).
    result = Segmenter.from_pretrained(model_dir, device="cpu")(example_image)
    assert result.mask.shape == example_image.shape[:2]
    rows = segment_files(Segmenter.from_pretrained(model_dir, device="cpu"), EXAMPLES[:1], tmp_path / "out")
    assert rows[0]["status"] == "ok"


def test_the_recipe_refuses_unknown_arguments_of_the_new_model(tiny_net):
    from medseg_core.config import RecipeError, load_config

    with pytest.raises(RecipeError, match="did you mean width"):
        load_config(ROOT / "train/configs/unet_lite0_polyp.yaml",
                    ["--model", "{arch: tiny_net, num_classes: 1, widht: 8}"])
