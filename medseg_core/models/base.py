"""``SegModel``: every architecture's base: preprocessing, the encoder, ``forward``, and save / load / push through
``huggingface_hub``.

An architecture assembles an encoder, a decoder and a head in its constructor (in the spirit of
segmentation_models_pytorch's ``SegmentationModel``); the base resolves the normalisation, builds a timm encoder by
name, and runs ``forward``: encoder -> decoder -> head, the main output resized to the input, an optional presence
gate, and the deep-supervision outputs in training.

``config.json`` holds the constructor arguments (so it rebuilds the model exactly), the registry name under
``arch``, and the preprocessing (``input_size``, ``mean``, ``std``). Weights are read and written as
safetensors only, and loaded strictly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download

from .encoders import create_encoder, encoder_normalization, wants_imagenet
from .layers import gate_logits

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelInfo", "SegModel"]

#: The normalisation of a model without a pretrained encoder (ImageNet's statistics: a sensible scale).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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

    ``forward`` is encoder -> decoder -> head: :meth:`encode` gives the encoder's feature maps, shallow to deep
    (``self.encoder(x)`` unless an architecture has an encoder of its own), and :meth:`decode` turns them into
    logits (``self.head(self.decoder(features))`` unless an architecture decodes otherwise): the main output, or a
    list whose first entry is the main output and whose others are deep-supervision side outputs. The main output is
    resized to the input; with a ``classifier`` (a presence head on the deepest feature map, UNet 3+'s CGM) every
    output is gated by P(lesion present); in training mode, with ``deep_supervision``, ``forward`` returns the list,
    main output first (train it with ``DeepSupervisionLoss``), otherwise the main output alone.

    An architecture with an encoder of its own overrides :meth:`encode`; one whose computation does not fit this
    pattern at all overrides ``forward`` and keeps this class for the preprocessing and the hub.

    The arguments below are shared by every architecture and named the same in each constructor:

    Args:
        num_classes: output channels; 1 means binary with a sigmoid, more means softmax over classes.
        input_size: the square side images are resized to before the model.
        mean, std: per-channel normalisation of RGB values scaled to [0, 1]; None for the encoder's (ImageNet's for a
            model without a timm encoder).
        in_channels: channels of the tensor ``forward`` takes (3 for RGB; more for models reading several views).
        encoder: a timm model name, built as ``self.encoder`` (a ``features_only`` extractor whose ``feature_info``
            gives each output's channels and stride); ``tf_efficientnet_lite0/1/2`` have ImageNet weights offline,
            others come from the Hub. None for an architecture with an encoder of its own.
        encoder_weights: ``"imagenet"`` or ``"random"`` initialisation of the encoder.
        encoder_kwargs: further arguments of :func:`~medseg_core.models.encoders.create_encoder` (``output_stride``;
            ``in_chans`` where it differs from ``in_channels``).
    """

    arch: ClassVar[str] = ""
    info: ClassVar[ModelInfo] = ModelInfo()

    def __init__(
        self,
        num_classes: int,
        input_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        in_channels: int = 3,
        *,
        encoder: str | None = None,
        encoder_weights: str = "imagenet",
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        default_mean, default_std = encoder_normalization(encoder) if encoder else (IMAGENET_MEAN, IMAGENET_STD)
        self.mean = tuple(float(m) for m in mean or default_mean)
        self.std = tuple(float(s) for s in std or default_std)
        #: In training mode, return the side outputs too (where the architecture has them).
        self.deep_supervision = True
        #: An optional presence head: features[-1] -> (N, 1, 1, 1) logit that a lesion is present.
        self.classifier: nn.Module | None = None
        if encoder is not None:
            self.encoder = create_encoder(
                encoder, pretrained=wants_imagenet(encoder_weights), **{"in_chans": self.in_channels, **encoder_kwargs}
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, in_channels, H, W) -> the encoder's feature maps, shallow to deep."""
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """The encoder's feature maps -> logits: the main output, or a list, main output first, then the side
        outputs (which an architecture may skip computing unless :attr:`wants_side_outputs`)."""
        return self.head(self.decoder(features))

    @property
    def wants_side_outputs(self) -> bool:
        """True when ``forward`` returns the deep-supervision outputs: in training mode, with deep supervision."""
        return self.training and self.deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x (N, in_channels, H, W) -> logits (N, num_classes, H, W); in training mode with deep supervision a
        list: the main logits, then the side outputs at their own scales."""
        features = self.encode(x)
        outputs = self.decode(features)
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        outputs[0] = self._resize_to(outputs[0], x)
        if self.classifier is not None:
            presence = self.classifier(features[-1])
            outputs = [gate_logits(out, presence) for out in outputs]
        return outputs if self.wants_side_outputs and len(outputs) > 1 else outputs[0]

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
