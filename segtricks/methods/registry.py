"""The method registry: ``method:`` in a config names one of its entries.

- ``sempart`` (the default): the Sempart head on frozen keys, trained by ``segtricks.engine``; its entry
  is the model builder.
- ``tokencut``, ``lost``, ``deep_spectral``: training-free ``Method`` classes
  (``segtricks.methods.base``), built by ``build_method``.

Each entry carries literal attributes, read without importing torch when a config is checked:
``trains`` (a training stage: crop applies) and ``backbone`` (what its authors report with, a
default a grid may change: any registered backbone works).
"""
from __future__ import annotations

import torch

from segtricks.config.schema import Config
from segtricks.methods.base import Method
from segtricks.methods.deep_spectral import DeepSpectral
from segtricks.methods.lost import Lost
from segtricks.methods.tokencut import TokenCut
from segtricks.models.backbones import build_backbone
from segtricks.models.model import build_model
from segtricks.registry import Registry

METHODS = Registry(
    "method",
    contract="sempart: the model builder (cfg -> SegmentationModel), trained by segtricks.engine; every other "
    "entry a Method class (cfg, backbone) -> Method with predict(image (3,H,W) in [0,1], task) -> MethodOutput. "
    "Registered with trains: bool and backbone: the backbone its authors report with",
)
SEMPART = "sempart"

METHODS.register("sempart", trains=True, backbone="dino_vits8")(build_model)
METHODS.register("tokencut", trains=False, backbone="dino_vits16")(TokenCut)
METHODS.register("lost", trains=False, backbone="dino_vits16")(Lost)
METHODS.register("deep_spectral", trains=False, backbone="dino_vits16")(DeepSpectral)


def build_method(cfg: Config, device: torch.device) -> Method:
    """The configured training-free method on its backbone (weights resolved as training resolves
    them), on ``device``."""
    if METHODS.attributes(cfg.method)["trains"]:
        raise ValueError(f"method {cfg.method!r} trains: it is built by segtricks.engine, not here")
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.weights).to(device)
    return METHODS.get(cfg.method)(cfg, backbone)
