"""The training loop: ``train_one_epoch`` and the driver ``fit`` that calls hooks around it.

Behaviour is added through hooks (``segtricks.engine.hooks``: validation, checkpointing, the progress
line, MLflow logging, Optuna pruning), in the manner of detectron2 and DINO. Training tricks add loss
terms through their ``extra_terms`` contract (``segtricks.method.tricks``); the loop names none of them.
Every epoch reseeds all random streams from (seed, epoch), so a resumed training ends with the same
weights as an uninterrupted one on CPU.

Metric names (the same in MLflow): ``train.<term>`` (epoch means of the unweighted loss terms and
of the weighted total ``train.loss``), ``val.iou``, and ``epoch``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from segtricks.data.loaders import EpochSampler, data_loader
from segtricks.engine.device import seed_everything
from segtricks.engine.hooks import Hook, LoopState
from segtricks.errors import SegtricksError
from segtricks.method import losses
from segtricks.method.tricks import TrainStep, training_tricks
from segtricks.models.model import SegmentationModel
from segtricks.spec.config import Config


class NonFiniteLossError(SegtricksError, FloatingPointError):
    """A loss term became NaN or infinite; the message names the term, epoch and step. A training
    failure (exit 1): the config and files are valid, the optimisation diverged."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


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
    # the step bar is closed however the epoch ends (a non-finite loss, an interrupt)
    with tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False) as bar:
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
    return {f"train.{k}": v / max(steps, 1) for k, v in sums.items()}


def training_loader(state: LoopState, train_set: Dataset, collate) -> DataLoader:
    """One loader for every epoch (its workers persist on CUDA); ``train_one_epoch`` reseeds its sampler."""
    cfg = state.cfg
    return data_loader(train_set, cfg.optim.batch_size, cfg.data.num_workers, state.device, collate,
                       sampler=EpochSampler(len(train_set)))


def fit(state: LoopState, train_set: Dataset, collate, hooks: Sequence[Hook]) -> None:
    """Epochs ``state.epoch`` … ``cfg.optim.epochs − 1``, each followed by every hook in order
    (``segtricks.engine.hooks.build_hooks``). Every hook's ``after_train`` runs however training ends,
    after an exception too, which then propagates (detectron2's ``train`` does the same)."""
    loader = training_loader(state, train_set, collate)
    try:
        for hook in hooks:
            hook.before_train(state)
        for epoch in range(state.epoch, state.cfg.optim.epochs):
            state.epoch = epoch
            state.score = float(epoch)
            metrics = train_one_epoch(state, loader)
            for hook in hooks:
                hook.after_epoch(state, metrics)
    finally:
        for hook in hooks:
            hook.after_train(state)
