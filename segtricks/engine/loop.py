"""The training loop: ``train_one_epoch``, the driver ``fit`` that calls hooks around it, the ``Hook``
base and the ``LoopState`` they share, and the one ``build_optimizer``.

Behaviour is added through hooks (``segtricks.engine.hooks``: validation, checkpointing, the progress
line, MLflow logging, Optuna pruning), in the manner of detectron2's ``train_loop.py`` and DINO: the
loop imports none of them. The method's loss terms and learning-rate schedule come from its
``TrainingRecipe`` (``segtricks.methods``: Sempart's, FOUND's, SelfMask's), and training tricks add terms through
their ``extra_terms`` contract (``segtricks.method.tricks``); the loop names none of them.
Every epoch reseeds all random streams from (seed, epoch), so a resumed training ends with the same
weights as an uninterrupted one on CPU.

Metric names (the same in MLflow): ``train.<term>`` (epoch means of the unweighted loss terms over
the steps that had them, and of the weighted total ``train.loss``), ``val.iou``, and ``epoch``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from segtricks.data.loaders import EpochSampler, data_loader
from segtricks.runtime.device import Precision, precision_of, seed_everything
from segtricks.errors import SegtricksError
from segtricks.method.tricks import TrainStep, training_tricks
from segtricks.methods.registry import training_recipe
from segtricks.config.schema import Config


class NonFiniteLossError(SegtricksError, FloatingPointError):
    """A loss term became NaN or infinite; the message names the term, epoch and step. A training
    failure (exit 1): the config and files are valid, the optimisation diverged."""


SHOW_EVERY = 10  # steps between updates of the progress bar's running means


@dataclass
class LoopState:
    """What the loop and its hooks share. ``score`` is this epoch's model-selection score (set by
    the validation hook; the epoch number when there is none, so the latest epoch is the best)."""

    cfg: Config
    model: torch.nn.Module  # the method's (TrainingRecipe.build_model): a backbone and a trainable head
    optimizer: torch.optim.Optimizer
    device: torch.device
    epoch: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    best_score: float = -float("inf")
    best_epoch: int = -1
    score: float = 0.0
    # loss scaling for fp16 (``Precision.scales_loss``); disabled, it passes the loss and step through
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))


class Hook:
    """Base class of training hooks; override the calls you need. An exception raised by a hook
    stops training (hooks after the checkpoint hook find the epoch already saved).

    ``after_train`` runs however the loop ends, after an exception too (detectron2's semantics), so
    it must not assume that ``before_train`` or every epoch ran."""

    def before_train(self, state: LoopState) -> None:
        pass

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        pass

    def after_train(self, state: LoopState) -> None:
        pass


def build_optimizer(cfg: Config, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW with the config's learning rate, betas and weight decay: the trainer's, and what the
    estimate and the benchmarks time."""
    return torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


def loss_weights(cfg: Config) -> Dict[str, float]:
    """The weight of every loss term the method and the configured tricks produce, the method's first."""
    weights = training_recipe(cfg).loss_weights(cfg)
    for trick in training_tricks(cfg.tricks):
        weights |= trick.loss_weights(cfg)
    return weights


def loss_terms(model: torch.nn.Module, images: torch.Tensor, cfg: Config, generator: Optional[torch.Generator],
               precision: Precision, step: int = 0, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """All unweighted loss terms of one batch at global step ``step``: the method's own (Sempart's four,
    docs/method.md#losses; FOUND's and SelfMask's, docs/methods.md; ``targets``: the batch's masks, for a
    method that trains on them), then each training trick's.

    ``precision``: the model runs under its autocast (``precision_of`` the device; any precision on
    any device, as the tests run bf16 on the CPU). Only the model: its outputs may then be bfloat16 or
    float16, but every term is computed, outside the region, in float32 (``segtricks.method.losses``).
    """
    def predict(x: torch.Tensor, fine_grad: bool = True) -> Dict[str, torch.Tensor]:
        with precision.autocast(x.device.type):
            return model(x, fine_grad=fine_grad)

    out = predict(images)
    terms = training_recipe(cfg).loss_terms(model, images, out, cfg, step, targets)
    trick_step = TrainStep(images, out, predict, cfg, generator)
    for trick in training_tricks(cfg.tricks):
        terms.update(trick.extra_terms(trick_step))
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
    precision = precision_of(state.device)
    seed = epoch_seed(cfg.seed, epoch)
    seed_everything(seed)
    loader.sampler.seed = seed  # this epoch's shuffle and augmentation seeds (segtricks.data.loaders)
    generator = torch.Generator().manual_seed(seed)  # the training tricks' randomness (crop windows)
    steps = len(loader) if cfg.optim.steps_per_epoch is None else min(len(loader), cfg.optim.steps_per_epoch)
    weights = loss_weights(cfg)
    recipe = training_recipe(cfg)
    model.train()
    sums: Dict[str, torch.Tensor] = {}  # on the device: read back every SHOW_EVERY steps, not per term and step
    counts: Dict[str, int] = {}  # steps that had each term (FOUND's change after its first 100 steps)
    # the step bar is closed however the epoch ends (a non-finite loss, an interrupt)
    with tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False) as bar:
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            images, targets = batch if isinstance(batch, tuple) else (batch, None)  # targets: SelfMask's masks
            images = images.to(state.device, non_blocking=True)
            if targets is not None:
                targets = targets.to(state.device, non_blocking=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            global_step = epoch * steps + step  # every epoch has the same number of steps
            for group in state.optimizer.param_groups:  # the method's schedule, a function of the step
                group["lr"] = cfg.optim.lr * recipe.lr_factor(cfg, global_step, steps)
            terms = loss_terms(model, images, cfg, generator, precision, global_step, targets)
            check_finite(terms, epoch, step)  # the step's one wait for the device
            loss = sum(weights[k] * v for k, v in terms.items())
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()  # a no-op scaler unless the precision scales the loss
            state.scaler.step(state.optimizer)
            state.scaler.update()
            for k, v in {**terms, "loss": loss}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
                counts[k] = counts.get(k, 0) + 1
            if step % SHOW_EVERY == 0 or step == steps - 1:
                bar.set_postfix({k: f"{v.item() / counts[k]:.4f}" for k, v in sums.items()})
    return {f"train.{k}": v.item() / counts[k] for k, v in sums.items()}


def training_loader(state: LoopState, train_set: Dataset, collate) -> DataLoader:
    """One loader for every epoch (its workers persist on CUDA); ``train_one_epoch`` reseeds its sampler."""
    cfg = state.cfg
    return data_loader(train_set, cfg.optim.batch_size, cfg.data.num_workers, state.device, collate,
                       sampler=EpochSampler(len(train_set)), persistent=True)


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
