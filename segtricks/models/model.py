"""Frozen backbone + trainable Sempart head, taking [0, 1] images."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from segtricks.errors import BadInput
from segtricks.models.backbones import IMAGENET_MEAN, IMAGENET_STD, KeyBackbone, build_backbone
from segtricks.models.weights import OFFICIAL_OR_RANDOM, RANDOM_INIT, find_weights
from segtricks.models.head import SempartHead
from segtricks.config.schema import Config, ConfigError, patch_misfit


class OtherWeightsError(BadInput, ValueError):
    """A trained head loaded over backbone weights other than those it was trained on."""


class SegmentationModel(nn.Module):
    """``forward(images01)`` → ``{"coarse", "fine", "features"}``; only the head is trainable.

    Images are (B, 3, H, W) in [0, 1] (the guided filter needs them unnormalised); the model
    ImageNet-normalises them for the backbone and for the image concatenated inside the head.
    """

    def __init__(self, backbone: KeyBackbone, head: SempartHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor, features: Optional[torch.Tensor] = None,
                fine_grad: bool = True) -> Dict[str, torch.Tensor]:
        """``features``: the backbone's keys of ``images`` when already known (evaluation's key cache);
        ``fine_grad=False``: the fine mask without a graph (``SempartHead.forward``)."""
        x = self.normalise(images)
        if features is None:
            with torch.no_grad():
                features = self.backbone(x)
        out = self.head(features, x, fine_grad=fine_grad)
        out["features"] = features
        return out


def build_model(cfg: Config) -> SegmentationModel:
    """Backbone (weights resolved per cfg.backbone) and a freshly initialised head."""
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.rope_keys)
    misfit = patch_misfit(cfg, backbone.patch_size)
    if misfit:
        raise ConfigError(misfit, "data.image_size")
    return SegmentationModel(backbone, SempartHead(backbone.embed_dim, backbone.patch_size))


def expected_weights(cfg: Config, weights_id: str) -> str:
    """Where to put the weights a head was trained on (``weights_id``) for ``cfg`` to resolve them."""
    if weights_id == RANDOM_INIT:
        return f"it was trained on a random-init backbone: set backbone.weights to {RANDOM_INIT}"
    if cfg.backbone.weights not in (None, OFFICIAL_OR_RANDOM):
        return f"put the weights file it was trained on at backbone.weights = {cfg.backbone.weights}"
    return (f"put the official {cfg.backbone.name} release it was trained on in $SEGTRICKS_WEIGHTS or the "
            f"torch.hub cache, or pass its path as backbone.weights")


def with_trained_head(model: nn.Module, head: Dict[str, torch.Tensor], weights_id: str, cfg: Config,
                      source: Path) -> nn.Module:
    """``model`` (built from ``cfg`` by its method's recipe: a ``backbone`` and a ``head``) with a trained head's state; the head must have been trained on
    the backbone weights this model resolved (``source``: the checkpoint, named in the error)."""
    if weights_id != model.backbone.weights_id:
        loaded = find_weights(cfg.backbone.name, cfg.backbone.weights, download=False) or "no weights file"
        raise OtherWeightsError(f"{source} was trained on backbone weights {weights_id}, but "
                                f"{cfg.backbone.name} resolves to {model.backbone.weights_id} here ({loaded}); "
                                f"{expected_weights(cfg, weights_id)}")
    model.head.load_state_dict(head)
    return model
