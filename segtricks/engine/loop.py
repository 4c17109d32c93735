"""The training loop: ``train_one_epoch`` and the driver ``fit`` that calls hooks around it.

Behaviour is added through hooks, in the manner of detectron2 and DINO: validation, checkpointing
(``segtricks.engine.training``), the per-epoch progress line, MLflow logging (``segtricks.tracking.store``) and
Optuna pruning (``segtricks.tune``) each implement ``before_train / after_epoch / after_train``.
Training tricks add loss terms through their ``extra_terms`` contract (``segtricks.method.tricks``); the
loop names none of them. Every epoch reseeds all random streams from (seed, epoch), so a resumed
training ends with the same weights as an uninterrupted one on CPU.

Metric names (the same in MLflow): ``train.<term>`` (epoch means of the unweighted loss terms and
of the weighted total ``train.loss``), ``val.iou``, and ``epoch``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from segtricks.method import losses
from segtricks.spec.config import Config, DatasetRef
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.data.loaders import EpochSampler, data_loader
from segtricks.models.model import SegmentationModel
from segtricks.method.tricks import TrainStep, training_tricks


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the term, epoch and step."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


@dataclass
class LoopState:
    """What the loop and its hooks share. ``score`` is this epoch's model-selection score (set by
    the validation hook; the epoch number when there is none, so the latest epoch is the best)."""

    cfg: Config
    model: SegmentationModel
    optimizer: torch.optim.Optimizer
    device: torch.device
    training_hash: str
    directory: Path
    epoch: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    best_score: float = -float("inf")
    best_epoch: int = -1
    score: float = 0.0


class Hook:
    """Base class of training hooks; override the calls you need. An exception raised by a hook
    stops training (hooks after the checkpoint hook find the epoch already saved)."""

    def before_train(self, state: LoopState) -> None:
        pass

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        pass

    def after_train(self, state: LoopState) -> None:
        pass


class Validation(Hook):
    """Adds ``val.iou`` on the validation split (our protocol, no post-processing) and sets the
    epoch's selection score to it."""

    def __init__(self, ref: DatasetRef) -> None:
        self.ref = ref

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        ev = evaluate_model(state.model, state.cfg, self.ref, device=state.device, with_structure=False,
                            progress=False)
        metrics["val.iou"] = state.score = ev.results()["iou"]


class ProgressLine(Hook):
    """One line per finished epoch with every metric (the step bar lives in ``train_one_epoch``)."""

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        tqdm.write(f"epoch {state.epoch + 1}/{state.cfg.optim.epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"))


def loss_weights(cfg: Config) -> Dict[str, float]:
    """The weight of every loss term the configured tricks produce, base terms first."""
    weights = {"ncut": cfg.loss.ncut, "fine_tv": cfg.loss.fine_tv, "coarse_tv": cfg.loss.coarse_tv,
               "consistency": cfg.loss.consistency}
    for trick in training_tricks(cfg.tricks):
        weights |= trick.loss_weights(cfg)
    return weights


def loss_terms(model: SegmentationModel, images: torch.Tensor, cfg: Config,
               generator: Optional[torch.Generator], autocast: bool) -> Dict[str, torch.Tensor]:
    """All unweighted loss terms of one batch: Sempart's four (SPEC §3), then each training trick's.

    ``autocast``: run the model, on every device (CPU included, as the tests do), under bf16 autocast.
    Only the model: its outputs may then be bfloat16, but every term is computed, outside the region,
    in float32 (``segtricks.method.losses``).
    """
    def predict(x: torch.Tensor, fine_grad: bool = True) -> Dict[str, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x, fine_grad=fine_grad)

    lc = cfg.loss
    out = predict(images)
    normalised = (images - model.mean) / model.std
    terms = {
        "ncut": losses.ncut_loss(out["coarse"], losses.thresholded_affinity(out["features"], lc.tau, lc.eps)),
        "fine_tv": losses.fine_graph_tv(out["fine"], normalised, lc.sigma),
        "coarse_tv": losses.coarse_graph_tv(out["coarse"], out["features"], lc.tau, lc.eps),
        "consistency": losses.coarse_fine_consistency(out["coarse"], out["fine"]),
    }
    step = TrainStep(images, out, predict, cfg, generator)
    for trick in training_tricks(cfg.tricks):
        terms.update(trick.extra_terms(step))
    return terms


def check_finite(terms: Dict[str, torch.Tensor], epoch: int, step: int) -> None:
    values = torch.stack([t.detach().float() for t in terms.values()])
    if not torch.isfinite(values).all():
        bad = [f"{k}={v.item()}" for k, v in zip(terms, values) if not torch.isfinite(v)]
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {step + 1}: {', '.join(bad)}; training "
            f"stopped (last good checkpoint kept). Lower optim.lr or check the inputs."
        )


def train_one_epoch(state: LoopState, loader: DataLoader) -> Dict[str, float]:
    """One epoch of ``loader`` (``training_loader``: reseeded from (seed, epoch)); returns the
    ``train.*`` means."""
    cfg, epoch, model, cuda = state.cfg, state.epoch, state.model, state.device.type == "cuda"
    seed = epoch_seed(cfg.seed, epoch)
    seed_everything(seed)
    loader.sampler.seed = seed  # this epoch's shuffle and augmentation seeds (segtricks.data.loaders)
    generator = torch.Generator().manual_seed(seed)  # the training tricks' randomness (crop windows)
    steps = len(loader) if cfg.optim.steps_per_epoch is None else min(len(loader), cfg.optim.steps_per_epoch)
    weights = loss_weights(cfg)
    model.train()
    sums: Dict[str, float] = {}
    bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False)
    for step, images in enumerate(bar):
        if step >= steps:
            break
        images = images.to(state.device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        # bf16 on CUDA only: on CPUs without native bf16 kernels (oneDNN here) it was 40× slower
        terms = loss_terms(model, images, cfg, generator, autocast=cuda)
        check_finite(terms, epoch, step)
        loss = sum(weights[k] * v for k, v in terms.items())
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        for k, v in {**terms, "loss": loss}.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()})
    bar.close()
    return {f"train.{k}": v / max(steps, 1) for k, v in sums.items()}


def training_loader(state: LoopState, train_set: Dataset, collate) -> DataLoader:
    """One loader for every epoch (its workers persist on CUDA); ``train_one_epoch`` reseeds its sampler."""
    cfg = state.cfg
    return data_loader(train_set, cfg.optim.batch_size, cfg.data.num_workers, state.device, collate,
                       sampler=EpochSampler(len(train_set)))


def fit(state: LoopState, train_set: Dataset, collate, hooks: Sequence[Hook]) -> None:
    """Epochs ``state.epoch`` … ``cfg.optim.epochs − 1``, each followed by every hook in order."""
    loader = training_loader(state, train_set, collate)
    for hook in hooks:
        hook.before_train(state)
    for epoch in range(state.epoch, state.cfg.optim.epochs):
        state.epoch = epoch
        state.score = float(epoch)
        metrics = train_one_epoch(state, loader)
        for hook in hooks:
            hook.after_epoch(state, metrics)
    for hook in hooks:
        hook.after_train(state)
