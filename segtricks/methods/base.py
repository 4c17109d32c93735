"""What a method is: ``Method`` (one image at its own size → a mask and a box) and, for a method that
trains, its ``TrainingRecipe``. The registry is ``segtricks.methods.registry``.

A method is built from a config and a frozen backbone, and predicts one image at a time at its own
size, as its authors run it:

    method = build_method(cfg, device)
    out = method.predict(image, task)     # image (3, H, W) in [0, 1] on the device; task "saliency" or "boxes"
    out.mask                              # (H, W) float32 in [0, 1] at the image's size (binary for these)
    out.box                               # [x1, y1, x2, y2] in image pixels: the box CorLoc scores

A method that trains (Sempart, FOUND) registers a ``TrainingRecipe``: the model it trains, its training
view of a dataset, its loss terms and learning-rate schedule (``segtricks.engine`` runs them), and how
its trained model is evaluated: by ``evaluate_model`` (Sempart: the fixed prediction size, the caches)
or as a ``Method`` of the trained model (FOUND: each image at its own size).

``task`` is ``boxes`` for a dataset with ground-truth boxes and no masks (VOC, COCO: the authors'
CorLoc preprocessing, usually zero-padding to the patch) and ``saliency`` otherwise (their saliency
preprocessing). The post-processing tricks (GF, BF) apply to any method's mask, at the image's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from segtricks.config.schema import Config, ConfigError, patch_misfit
from segtricks.data.datasets import RawDataset
from segtricks.models.backbones import IMAGENET_MEAN, IMAGENET_STD, KeyBackbone, build_backbone

TASKS = ("saliency", "boxes")


@dataclass
class MethodOutput:
    mask: np.ndarray  # (H, W) float32 in [0, 1] at the image's size
    box: np.ndarray  # (4,) [x1, y1, x2, y2] in image pixels, the end exclusive


class Method:
    """A method on a frozen backbone; subclasses implement ``predict``. The backbone runs in float32
    on every device: the methods threshold affinities of its keys, and their authors computed them in
    float32 (bf16 keys flip entries near the threshold)."""

    def __init__(self, cfg: Config, backbone: KeyBackbone) -> None:
        self.cfg, self.backbone = cfg, backbone
        self.patch = backbone.patch_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean.to(image.device)) / self.std.to(image.device)

    @torch.no_grad()
    def keys(self, normalised: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 keys of one normalised image whose sides are multiples of the patch, patches
        in row-major order (CLS dropped)."""
        return self.backbone(normalised[None].float())[0].flatten(1).T.float()

    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        raise NotImplementedError


class TrainedMethod(Method):
    """A trained model (a ``TrainingRecipe``'s, with its ``backbone``) as a method, in eval mode."""

    def __init__(self, cfg: Config, model: nn.Module) -> None:
        super().__init__(cfg, model.backbone)
        self.model = model.eval()


class TrainingRecipe:
    """How a method trains; ``segtricks.engine`` calls nothing method-specific but these.

    - ``build_model(cfg)``: the model, a ``backbone`` (its ``weights_id`` is checkpointed with the
      head) and a trainable ``head`` (the parameters optimised and checkpointed: a method that
      fine-tunes the backbone registers the backbone's ViT in its head, as SelfMask does);
      ``model(images01, fine_grad=True)`` → a dict of outputs; Sempart's (``coarse``, ``fine``,
      ``features``) are what the training tricks read, and only Sempart takes them.
    - ``train_view(cfg, raw)``: the augmented training items, ``(index, seed)`` → an image (3, S, S) in
      [0, 1], or (image, target) for a method that trains on masks (``None`` for a skipped file),
      with a ``collate`` that gives a batch of images or (images, targets).
    - ``loss_terms(model, images, out, cfg, step, targets=None)``: the method's unweighted float32 loss
      terms of one batch (``out``: the model's outputs on it; ``step``: the global step, from 0;
      ``targets``: the batch's targets, if its view gives them); the training tricks' terms are added
      by the loop. ``loss_weights(cfg)``: the weight of each term it may return.
    - ``lr_factor(cfg, step, steps_per_epoch=None)``: the learning rate at ``step`` over ``optim.lr``
      (a pure function of the step and the epoch's length, so that a resumed training continues the
      schedule).
    - ``as_method(cfg, model)``: the trained model as a ``Method`` evaluated image by image, or None
      for ``evaluate_model``'s batched path.
    """

    def build_model(self, cfg: Config) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def training_backbone(cfg: Config) -> KeyBackbone:
        """The configured backbone, for a model trained and predicting at ``data.image_size``, which must
        be a multiple of its patch (checked before a grid runs too, ``config.grid.validate_names``)."""
        backbone = build_backbone(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.rope_keys)
        misfit = patch_misfit(cfg, backbone.patch_size)
        if misfit:
            raise ConfigError(misfit, "data.image_size")
        return backbone

    def train_view(self, cfg: Config, raw: RawDataset) -> Dataset:
        raise NotImplementedError

    def loss_terms(self, model: nn.Module, images: torch.Tensor, out: Dict[str, torch.Tensor], cfg: Config,
                   step: int, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss_weights(self, cfg: Config) -> Dict[str, float]:
        raise NotImplementedError

    def lr_factor(self, cfg: Config, step: int, steps_per_epoch: Optional[int] = None) -> float:
        return 1.0

    def as_method(self, cfg: Config, model: nn.Module) -> Optional[Method]:
        return None
