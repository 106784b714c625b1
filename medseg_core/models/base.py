"""``SegModel``: every architecture's base, with save / load / push through ``huggingface_hub``.

``config.json`` holds the constructor arguments (so it rebuilds the model exactly), the registry name under
``arch``, and the preprocessing (``input_size``, ``mean``, ``std``). Weights are read and written as
safetensors only, and loaded strictly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download

__all__ = ["ModelInfo", "SegModel"]


@dataclass(frozen=True)
class ModelInfo:
    """An architecture's metadata, readable without building the model (timm's ``PretrainedCfg``)."""

    paper: str = ""
    default_encoder: str | None = None
    input_size: int = 352
    license: str = "apache-2.0"
    views: tuple[str, ...] = ("original",)
    #: False for helper models that do not segment an RGB image on their own (the ``refine`` step's refiner).
    segments_images: bool = True


class SegModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="medseg",
    tags=["medical-imaging", "image-segmentation", "endoscopy"],
    license="apache-2.0",
    pipeline_tag="image-segmentation",
):
    """Base of all segmentation models: ``forward(x)`` returns logits ``(N, C, H, W)`` at input resolution.

    In training mode a model with deep supervision returns a list, main output first.

    Args:
        num_classes: output channels; 1 means binary with a sigmoid, more means softmax over classes.
        input_size: the square side images are resized to before the model.
        mean, std: per-channel normalisation of RGB values scaled to [0, 1].
        in_channels: channels of the tensor ``forward`` takes (3 for RGB; more for models reading several views).
    """

    arch: ClassVar[str] = ""
    info: ClassVar[ModelInfo] = ModelInfo()

    def __init__(
        self,
        num_classes: int,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}

    @property
    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds: constructor arguments, ``arch`` and the resolved preprocessing."""
        config = {**(self._hub_mixin_config or {}), "arch": self.arch, "num_classes": self.num_classes,
                  **self.preprocessing}
        # Through JSON and back, so tuples become lists exactly as they will after a save and load.
        return json.loads(json.dumps(config))

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any) -> str | None:
        """Write ``model.safetensors``, ``config.json`` (with ``arch``) and a model card to a folder."""
        return super().save_pretrained(save_directory, config={**self.config, **(config or {})}, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> SegModel:
        model_kwargs.pop("arch", None)
        recorded_weights = model_kwargs.get("encoder_weights")
        if "encoder_weights" in cls._hub_mixin_init_parameters:
            # The checkpoint replaces every weight: don't fetch ImageNet ones first.
            model_kwargs["encoder_weights"] = "random"
        model = cls(**model_kwargs)
        if model._hub_mixin_config is not None and "encoder_weights" in model._hub_mixin_config:
            model._hub_mixin_config["encoder_weights"] = recorded_weights
        if os.path.isdir(model_id):
            weights_file = os.path.join(model_id, "model.safetensors")
        else:
            weights_file = hf_hub_download(
                repo_id=model_id,
                filename="model.safetensors",
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        safetensors.torch.load_model(model, weights_file, strict=strict, device=map_location)
        return model.eval()

    def auxiliary_loss(self) -> torch.Tensor | None:
        """An extra training loss computed during the last training-mode forward (e.g. DDANet's reconstruction
        of the grey input), added to the segmentation loss by ``train.py``; None for most models."""
        return None

    def _resize_to(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != x.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits
