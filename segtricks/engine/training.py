"""One training as one object: its identity, folder, status, the run that trains it, its model.

    training = Training.in_root(cfg, "outputs")   # outputs/trainings/<hash[:16]>, shared by hash
    training.status()                             # absent / partial at epoch k / complete / corrupt
    training.run(hooks)                           # train or resume; a complete training is not rebuilt
    training.model()                              # the best checkpoint, loaded once

The folder (``segtricks.engine.folder.TrainingFolder``, ``training.folder``) holds ``config.yaml``
(the resolved config), ``last.pt`` (head, optimizer and loop state, written atomically every epoch),
``best.pt`` (best validation epoch), both through the ``Checkpointer``, and ``status.json``: a small
summary written after both checkpoints (hash, weights, epochs done, best epoch, history, and the
checkpoint sizes). ``status()`` reads only that file and the sizes on disk; a checkpoint whose size
differs (a kill between writes, or a damaged file) is checked by loading it, and a file that does not
load is reported corrupt, by name. ``build_hooks`` holds the default hooks and their order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from segtricks.data.datasets import build_dataset
from segtricks.data.pseudo_masks import training_set
from segtricks.engine import checkpoint
from segtricks.engine.checkpoint import Checkpointer
from segtricks.engine.folder import TrainingFolder, TrainingSummary
from segtricks.engine.hooks import Checkpointing, ProgressLine, Validation
from segtricks.engine.loop import Hook, LoopState, build_optimizer, fit
from segtricks.errors import BadInput
from segtricks.evaluation.method_evaluation import evaluate_method
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.method.tricks import TRICKS, get_tricks
from segtricks.methods.registry import training_recipe
from segtricks.models.model import with_trained_head
from segtricks.runtime.device import precision_of, resolve_device, seed_everything
from segtricks.config.schema import (NUMBER_NEUTRAL, Config, ConfigError, canonical_sha256, resolved_yaml, to_dict,
                                     without_other_methods)


class ConfigMismatchError(BadInput, RuntimeError):
    """The folder holds a training of a different training config (exit 2: choose another output_dir).
    Still a RuntimeError: a study's ``optimize(catch=(RuntimeError,))`` fails that trial and goes on."""


def training_hash(cfg: Config) -> str:
    """sha256 of what determines the trained weights.

    Left out: post-processing tricks and their parameter sections, the evaluation datasets and
    protocol, output paths and caches, the device, data-loader workers and the epoch budget (a longer run
    continues a shorter one). A training trick's parameter section counts only when that trick is on,
    and a method's only for that method's cells.
    """
    d = without_other_methods(to_dict(cfg))
    for key in (*NUMBER_NEUTRAL, "device", "eval", "maps", "eval_protocols"):
        d.pop(key)
    d["data"].pop("num_workers")
    d["optim"].pop("epochs")
    if "found" in d:
        d["found"].pop("mode")  # how FOUND's output is read at evaluation (single or multi), not what trains
    d["tricks"] = sorted(t.name for t in get_tricks(cfg.tricks) if t.stage == "train")
    for name in TRICKS:
        if name in d and name not in d["tricks"]:
            d.pop(name)
    return canonical_sha256(d)


class State(Enum):
    ABSENT = "absent"
    PARTIAL = "partial"
    COMPLETE = "complete"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class TrainingStatus:
    state: State
    epochs_done: int = 0
    epochs: int = 0
    best_epoch: int = -1
    weights_id: str = ""
    problem: str = ""  # CORRUPT: which file, and why

    def __str__(self) -> str:
        if self.state is State.PARTIAL:
            return f"partial at epoch {self.epochs_done}/{self.epochs}"
        if self.state is State.COMPLETE:
            return f"complete ({self.epochs_done} epochs)"
        return f"corrupt: {self.problem}" if self.state is State.CORRUPT else "absent"


class Training:
    """The training of one config in one folder (see the module docstring)."""

    def __init__(self, cfg: Config, directory: Optional[str | Path] = None) -> None:
        self.cfg = cfg
        self.hash = training_hash(cfg)  # unknown trick names fail here, before any work
        self.folder = TrainingFolder(Path(cfg.output_dir if directory is None else directory))
        self.checkpointer = Checkpointer(self.folder, self.hash)
        self._models: Dict[str, torch.nn.Module] = {}

    @classmethod
    def in_root(cls, cfg: Config, output_root: str | Path) -> "Training":
        """The training shared by every config of the same training hash: ``<root>/trainings/<hash[:16]>``
        (``cfg.output_dir`` is set to it, so the config logged with a run names the folder)."""
        folder = TrainingFolder.in_root(output_root, training_hash(cfg))
        cfg.output_dir = str(folder.dir)
        return cls(cfg, folder.dir)

    @property
    def dir(self) -> Path:
        return self.folder.dir

    @property
    def last_path(self) -> Path:
        return self.folder.last

    @property
    def best_path(self) -> Path:
        return self.folder.best

    @property
    def status_path(self) -> Path:
        return self.folder.status

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> TrainingStatus:
        """Read from ``status.json`` and the checkpoint sizes; never unpickles weights unless a size
        disagrees. Raises ConfigMismatchError when the folder holds another training."""
        summary = self._read_status()
        if summary is not None and self.folder.checkpoint_sizes() == summary.files:
            return self._status_from(summary)
        if not self.last_path.exists():
            if summary is None and not self.best_path.exists():
                return TrainingStatus(State.ABSENT, epochs=self.cfg.optim.epochs)
            return self._corrupt(self.last_path, "is missing")
        try:  # status.json is behind the checkpoints (a kill between writes) or missing: rebuild it
            last = self.checkpointer.read_last()
        except checkpoint.CorruptCheckpoint as exc:
            return self._corrupt(self.last_path, f"does not load ({exc.reason})")
        self._check_hash(last.training_hash, self.last_path)
        try:
            self.checkpointer.check_best()
        except FileNotFoundError:
            return self._corrupt(self.best_path, "is missing")
        except checkpoint.CorruptCheckpoint as exc:
            return self._corrupt(self.best_path, f"does not load ({exc.reason})")
        self.write_status(last.epoch, last.best_epoch, last.best_score, last.weights_id, last.history)
        return self._status_from(self._read_status())

    def history(self) -> List[Dict[str, float]]:
        """Per-epoch metrics of the epochs done (from ``status.json``)."""
        summary = self._read_status() if self.status().state in (State.PARTIAL, State.COMPLETE) else None
        return [] if summary is None else summary.history

    def write_status(self, epochs_done: int, best_epoch: int, best_score: float, weights_id: str,
                     history: List[Dict[str, float]]) -> None:
        self.folder.write_summary(TrainingSummary(self.hash, weights_id, epochs_done, best_epoch, best_score, history,
                                                  self.folder.checkpoint_sizes()))

    def _read_status(self) -> Optional[TrainingSummary]:
        summary = self.folder.read_summary()  # None: missing or damaged, rebuilt from last.pt by status()
        if summary is not None:
            self._check_hash(summary.training_hash, self.status_path)
        return summary

    def _status_from(self, summary: TrainingSummary) -> TrainingStatus:
        done, epochs = summary.epochs_done, self.cfg.optim.epochs
        return TrainingStatus(State.COMPLETE if done >= epochs else State.PARTIAL, done, epochs,
                              summary.best_epoch, summary.weights_id)

    def _corrupt(self, path: Path, what: str) -> TrainingStatus:
        return TrainingStatus(State.CORRUPT, epochs=self.cfg.optim.epochs, problem=f"{path} {what}")

    def _set_aside(self, problem: str) -> None:
        """Keep a damaged training's files as ``<name>.corrupt`` (for inspection) so that it can
        train again from scratch; the cause is printed with the file named."""
        for path in (self.last_path, self.best_path, self.status_path):
            if path.exists():
                os.replace(path, path.with_name(path.name + ".corrupt"))
        tqdm.write(f"warning: {problem}; training {self.hash[:12]} starts again from scratch "
                   f"(the damaged files are kept in {self.dir} as *.corrupt)")

    def _check_hash(self, found: str, path: Path) -> None:
        if found != self.hash:
            raise ConfigMismatchError(
                f"{path} belongs to another config (training hash {found[:12]}, this config {self.hash[:12]}); "
                f"use another output_dir or remove that folder")

    # --- running and loading --------------------------------------------------------------------

    def run(self, hooks: Sequence[Hook] = ()) -> TrainingStatus:
        """Train, or resume from ``last.pt``; a complete training returns at once, building nothing.
        A corrupt one (a checkpoint that does not load) is set aside and trains again from scratch.

        ``hooks`` run after the built-in ones (``build_hooks``: validation, checkpointing, progress
        line), so an exception they raise stops training with the epoch saved."""
        status = self.status()
        if status.state is State.COMPLETE:
            return status
        if status.state is State.CORRUPT:
            self._set_aside(status.problem)
            status = self.status()
        cfg = self.cfg
        device = resolve_device(cfg.device, "the config's device:")
        seed_everything(cfg.seed)
        recipe = training_recipe(cfg)
        model = recipe.build_model(cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest kernels are searched once
        train_set = recipe.train_view(cfg, training_set(cfg))
        if cfg.data.val and not build_dataset(cfg.data.val).has_masks:  # fail before training, not after
            raise ConfigError(f"data.val: validation dataset {cfg.data.val.name!r} has no masks; model selection "
                              f"needs them (choose a dataset with masks, or drop data.val)", "data.val")
        state = LoopState(cfg, model, build_optimizer(cfg, model.head.parameters()), device,
                          scaler=torch.amp.GradScaler("cuda", enabled=precision_of(device).scales_loss))
        if status.state is State.PARTIAL:
            resumed = self.checkpointer.resume(model, state.optimizer, state.scaler)
            state.epoch, state.history = resumed.epoch, resumed.history
            state.best_score, state.best_epoch = resumed.best_score, resumed.best_epoch
        self.dir.mkdir(parents=True, exist_ok=True)
        self.folder.config.write_text(resolved_yaml(cfg))
        fit(state, train_set, train_set.collate, self.build_hooks(hooks))
        return self.status()

    def build_hooks(self, hooks: Sequence[Hook] = ()) -> List[Hook]:
        """The hooks of the loop in the order they run after every epoch: the built-in ones, then
        ``hooks`` (the caller's)."""
        built: List[Hook] = []
        if self.cfg.data.val:
            # First: it adds val.iou to the epoch's metrics and sets the epoch's selection score, which the
            # hooks after it read (checkpointing chooses best.pt by the score and keeps the metrics in the
            # history; the progress line, the MLflow logger and the pruner report val.iou).
            built.append(Validation(self.validation_iou))
        # Before every hook that may raise (a pruner, an interrupt, a logger whose store is down): the
        # epoch is on disk, so a training stopped by a later hook resumes after this epoch.
        built.append(Checkpointing(self.checkpointer, lambda s: self.write_status(
            s.epoch + 1, s.best_epoch, s.best_score, s.model.backbone.weights_id, s.history)))
        # After the save, so a printed epoch is never repeated by a rerun; before the caller's hooks, so an
        # epoch that one of them stops is still printed.
        built.append(ProgressLine())
        # The caller's hooks last: they see the complete metrics, and an exception they raise (Pruning's
        # TrialPruned) finds the epoch saved.
        return [*built, *hooks]

    def validation_iou(self, model: torch.nn.Module, device: torch.device) -> float:
        """The selection score of an epoch: IoU on the validation split, our protocol, no post-processing
        (as the method's trained model is evaluated: ``evaluate_model``, or image by image)."""
        method = training_recipe(self.cfg).as_method(self.cfg, model)
        if method is not None:
            evaluator = evaluate_method(method, self.cfg, self.cfg.data.val, device=device, with_structure=False,
                                        progress=False)
        else:
            evaluator = evaluate_model(model, self.cfg, self.cfg.data.val, device=device, with_structure=False,
                                       progress=False)
        return evaluator.results()["iou"]

    def model(self, device: Optional[torch.device] = None, which: str = "best") -> torch.nn.Module:
        """The model of the best (or ``which="last"``) checkpoint, loaded once per Training and
        checkpoint (the backbone must resolve to the weights it trained on)."""
        if which not in self._models:
            self._models[which] = load_trained(self.cfg, self.folder.checkpoint(which))
        model = self._models[which]
        return model if device is None else model.to(device)


def load_trained(cfg: Config, path: Path) -> torch.nn.Module:
    """The model of a checkpoint file (a folder's, or the copy an MLflow model holds), built by the
    method's recipe; its backbone must resolve to the weights it trained on."""
    saved = checkpoint.trained_head(path)
    return with_trained_head(training_recipe(cfg).build_model(cfg), saved.head, saved.weights_id, cfg, path)
