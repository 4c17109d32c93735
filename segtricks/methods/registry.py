"""The method registry: ``method:`` in a config names one of its entries.

- ``sempart`` (the default), ``found`` and ``selfmask``: methods that train; each entry is the method's
  ``TrainingRecipe`` (``segtricks.methods.base``), run by ``segtricks.engine`` (``training_recipe``).
- ``tokencut``, ``lost``, ``deep_spectral``: training-free ``Method`` classes, built by ``build_method``.

Each entry carries literal attributes, read without importing torch when a config is checked or a
grid priced: ``trains`` (a training stage), ``training_tricks`` (crop applies: the model gives the
coarse and fine masks and the features it reads; Sempart's and FOUND's do, SelfMask's does not),
``trains_on_masks`` (it learns from its training set's masks: SelfMask, the student of a distillation
cell), ``per_image`` (evaluated image by image at
each image's size, as a ``Method``; else by ``evaluate_model`` at the fixed prediction size, with the
caches) and ``backbone`` (what its authors report with, a default a grid may change: any registered
backbone works).
"""
from __future__ import annotations

import torch

from segtricks.config.schema import Config
from segtricks.methods.base import Method, TrainingRecipe
from segtricks.methods.deep_spectral import DeepSpectral
from segtricks.methods.found import FoundRecipe
from segtricks.methods.lost import Lost
from segtricks.methods.selfmask import SelfMaskRecipe
from segtricks.methods.sempart import SempartRecipe
from segtricks.methods.tokencut import TokenCut
from segtricks.models.backbones import build_backbone
from segtricks.registry import Registry

METHODS = Registry(
    "method",
    contract="a method that trains (trains=True): its TrainingRecipe (the model, training view, loss terms, "
    "learning-rate schedule and evaluation that segtricks.engine runs); every other entry a Method class "
    "(cfg, backbone) -> Method with predict(image (3,H,W) in [0,1], task) -> MethodOutput. Registered with "
    "trains: bool, training_tricks: bool (its model gives the coarse and fine masks a training trick reads), "
    "trains_on_masks: bool (it learns from its training set's masks, so a teacher's pseudo-masks can be them), "
    "per_image: bool (a Method at each image's size, else evaluate_model) and backbone: the backbone its "
    "authors report with",
)

METHODS.register("sempart", trains=True, training_tricks=True, trains_on_masks=False,
                 per_image=False, backbone="dino_vits8")(SempartRecipe())
METHODS.register("found", trains=True, training_tricks=True, trains_on_masks=False,
                 per_image=True, backbone="dino_vits8")(FoundRecipe())
METHODS.register("selfmask", trains=True, training_tricks=False, trains_on_masks=True,
                 per_image=True, backbone="dino_vits8")(SelfMaskRecipe())
METHODS.register("tokencut", trains=False, training_tricks=False, trains_on_masks=False,
                 per_image=True, backbone="dino_vits16")(TokenCut)
METHODS.register("lost", trains=False, training_tricks=False, trains_on_masks=False,
                 per_image=True, backbone="dino_vits16")(Lost)
METHODS.register("deep_spectral", trains=False, training_tricks=False, trains_on_masks=False, per_image=True,
                 backbone="dino_vits16")(DeepSpectral)


def training_recipe(cfg: Config) -> TrainingRecipe:
    """The recipe of the configured method, which must train."""
    if not METHODS.attributes(cfg.method)["trains"]:
        raise ValueError(f"method {cfg.method!r} trains nothing: it has no training recipe")
    return METHODS.get(cfg.method)


def build_method(cfg: Config, device: torch.device) -> Method:
    """The configured training-free method on its backbone (weights resolved as training resolves
    them), on ``device``."""
    if METHODS.attributes(cfg.method)["trains"]:
        raise ValueError(f"method {cfg.method!r} trains: its trained model is a method through its recipe's "
                         f"as_method, not built here")
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.rope_keys).to(device)
    return METHODS.get(cfg.method)(cfg, backbone)
