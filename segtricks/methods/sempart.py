"""Sempart's training recipe (docs/method.md): the head on frozen keys, its four loss terms, a constant
learning rate, the augmented square crops of ``TrainView``; evaluated by ``evaluate_model`` (the fixed
prediction size, with the key and mask caches)."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from segtricks.config.schema import Config
from segtricks.data.datasets import RawDataset
from segtricks.data.views import TrainView
from segtricks.method import losses
from segtricks.methods.base import TrainingRecipe
from segtricks.models.model import SegmentationModel, build_model


class SempartRecipe(TrainingRecipe):
    """Sempart: NCut, fine graph-TV, coarse graph-TV and coarse–fine consistency (``loss.*`` weights)."""

    def build_model(self, cfg: Config) -> SegmentationModel:
        return build_model(cfg)

    def train_view(self, cfg: Config, raw: RawDataset) -> TrainView:
        return TrainView(raw, cfg.data.image_size, cfg.data.resize_short, cfg.data.train.on_error)

    def loss_terms(self, model: SegmentationModel, images: torch.Tensor, out: Dict[str, torch.Tensor],
                   cfg: Config, step: int, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        lc = cfg.loss
        normalised = (images - model.mean) / model.std
        return {
            "ncut": losses.ncut_loss(out["coarse"], losses.thresholded_affinity(out["features"], lc.tau, lc.eps)),
            "fine_tv": losses.fine_graph_tv(out["fine"], normalised, lc.sigma),
            "coarse_tv": losses.coarse_graph_tv(out["coarse"], out["features"], lc.tau, lc.eps),
            "consistency": losses.coarse_fine_consistency(out["coarse"], out["fine"]),
        }

    def loss_weights(self, cfg: Config) -> Dict[str, float]:
        return {"ncut": cfg.loss.ncut, "fine_tv": cfg.loss.fine_tv, "coarse_tv": cfg.loss.coarse_tv,
                "consistency": cfg.loss.consistency}
