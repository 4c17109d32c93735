"""One training as one object: its identity, folder, status, the run that trains it, its model.

    training = Training.in_root(cfg, "outputs")   # outputs/trainings/<hash[:16]>, shared by hash
    training.status()                             # absent / partial at epoch k / complete / corrupt
    training.run(hooks)                           # train or resume; a complete training is not rebuilt
    training.model()                              # the best checkpoint, loaded once

The folder holds ``config.yaml`` (the resolved config), ``last.pt`` (head, optimizer and loop state,
written atomically every epoch), ``best.pt`` (best validation epoch) and ``status.json``: a small
summary written after both checkpoints (hash, weights, epochs done, best epoch, history, and the
checkpoint sizes). ``status()`` reads only that file and the sizes on disk; a checkpoint whose size
differs (a kill between writes, or a damaged file) is checked by loading it, and a file that does not
load is reported corrupt, by name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from segtricks.data.datasets import build_dataset
from segtricks.data.views import TrainView
from segtricks.engine import checkpoint
from segtricks.engine.device import precision_of, resolve_device, seed_everything
from segtricks.engine.hooks import Hook, LoopState, build_hooks
from segtricks.engine.loop import fit
from segtricks.errors import BadInput
from segtricks.files import write_atomic
from segtricks.method.tricks import TRICKS, get_tricks
from segtricks.models.model import SegmentationModel, build_model, load_trained
from segtricks.spec.config import NUMBER_NEUTRAL, Config, ConfigError, canonical_sha256, resolved_yaml, to_dict


class ConfigMismatchError(BadInput, RuntimeError):
    """The folder holds a training of a different training config (exit 2: choose another output_dir).
    Still a RuntimeError: a study's ``optimize(catch=(RuntimeError,))`` fails that trial and goes on."""


def training_hash(cfg: Config) -> str:
    """sha256 of what determines the trained weights.

    Left out: post-processing tricks and their parameter sections, the evaluation datasets and
    protocol, output paths and caches, the device, data-loader workers and the epoch budget (a longer run
    continues a shorter one). A training trick's parameter section counts only when that trick is on.
    """
    d = to_dict(cfg)
    for key in (*NUMBER_NEUTRAL, "device", "eval", "maps", "eval_protocols"):
        d.pop(key)
    d["data"].pop("num_workers")
    d["optim"].pop("epochs")
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
        self.dir = Path(cfg.output_dir if directory is None else directory)
        self._models: Dict[str, SegmentationModel] = {}

    @classmethod
    def in_root(cls, cfg: Config, output_root: str | Path) -> "Training":
        """The training shared by every config of the same training hash: ``<root>/trainings/<hash[:16]>``
        (``cfg.output_dir`` is set to it, so the config logged with a run names the folder)."""
        directory = Path(output_root) / "trainings" / training_hash(cfg)[:16]
        cfg.output_dir = str(directory)
        return cls(cfg, directory)

    @property
    def keys_dir(self) -> Path:
        """``<root>/keys``: the backbone-key cache that every training of an output root shares (for
        a training outside ``<root>/trainings/``, a ``keys`` folder beside it)."""
        return self.dir.parent.parent / "keys" if self.dir.parent.name == "trainings" else self.dir.parent / "keys"

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    @property
    def status_path(self) -> Path:
        return self.dir / "status.json"

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> TrainingStatus:
        """Read from ``status.json`` and the checkpoint sizes; never unpickles weights unless a size
        disagrees. Raises ConfigMismatchError when the folder holds another training."""
        info = self._read_status()
        if info is not None and all(self._size(name) == size for name, size in info["files"].items()):
            return self._status_from(info)
        if not self.last_path.exists():
            if info is None and not self.best_path.exists():
                return TrainingStatus(State.ABSENT, epochs=self.cfg.optim.epochs)
            return self._corrupt(self.last_path, "is missing")
        try:  # status.json is behind the checkpoints (a kill between writes) or missing: rebuild it
            state = checkpoint.load(self.last_path)
        except checkpoint.CorruptCheckpoint as exc:
            return self._corrupt(self.last_path, f"does not load ({exc.reason})")
        self._check_hash(state["training_hash"], self.last_path)
        try:
            checkpoint.load(self.best_path)
        except FileNotFoundError:
            return self._corrupt(self.best_path, "is missing")
        except checkpoint.CorruptCheckpoint as exc:
            return self._corrupt(self.best_path, f"does not load ({exc.reason})")
        self.write_status(state["epoch"] + 1, state["best_epoch"], state["best_score"], state["weights_id"],
                          state["history"])
        return self._status_from(self._read_status())

    def history(self) -> List[Dict[str, float]]:
        """Per-epoch metrics of the epochs done (from ``status.json``)."""
        info = self._read_status() if self.status().state in (State.PARTIAL, State.COMPLETE) else None
        return [] if info is None else info["history"]

    def write_status(self, epochs_done: int, best_epoch: int, best_score: float, weights_id: str,
                     history: List[Dict[str, float]]) -> None:
        info = {"training_hash": self.hash, "weights_id": weights_id, "epochs_done": epochs_done,
                "best_epoch": best_epoch, "best_score": best_score, "history": history,
                "files": {p.name: self._size(p.name) for p in (self.last_path, self.best_path)}}
        write_atomic(self.status_path, json.dumps(info, indent=1))

    def _read_status(self) -> Optional[Dict[str, Any]]:
        try:
            info = json.loads(self.status_path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # rebuilt from last.pt by status()
        self._check_hash(info["training_hash"], self.status_path)
        return info

    def _status_from(self, info: Dict[str, Any]) -> TrainingStatus:
        done, epochs = info["epochs_done"], self.cfg.optim.epochs
        return TrainingStatus(State.COMPLETE if done >= epochs else State.PARTIAL, done, epochs,
                              info["best_epoch"], info["weights_id"])

    def _size(self, name: str) -> int:
        try:
            return (self.dir / name).stat().st_size
        except FileNotFoundError:
            return -1

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

        ``hooks`` run after the built-in ones (``segtricks.engine.hooks.build_hooks``: validation,
        checkpointing, progress line), so an exception they raise stops training with the epoch saved."""
        status = self.status()
        if status.state is State.COMPLETE:
            return status
        if status.state is State.CORRUPT:
            self._set_aside(status.problem)
            status = self.status()
        cfg = self.cfg
        device = resolve_device(cfg.device, "the config's device:")
        seed_everything(cfg.seed)
        model = build_model(cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.head.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                      weight_decay=cfg.optim.weight_decay)
        train_set = TrainView(build_dataset(cfg.data.train), cfg.data.image_size, cfg.data.resize_short,
                              cfg.data.train.on_error)
        if cfg.data.val and not build_dataset(cfg.data.val).has_masks:  # fail before training, not after
            raise ConfigError(f"data.val: validation dataset {cfg.data.val.name!r} has no masks; model selection "
                              f"needs them (choose a dataset with masks, or drop data.val)", "data.val")
        precision = precision_of(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest kernels are searched once
        state = LoopState(cfg, model, optimizer, device, self.hash, scaler=torch.amp.GradScaler(
            "cuda", enabled=precision.scales_loss))
        if status.state is State.PARTIAL:
            saved = checkpoint.load(self.last_path)
            model.head.load_state_dict(saved["head"])
            optimizer.load_state_dict(saved["optimizer"])
            state.epoch, state.history = saved["epoch"] + 1, saved["history"]
            state.best_score, state.best_epoch = saved["best_score"], saved["best_epoch"]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(resolved_yaml(cfg))
        fit(state, train_set, TrainView.collate, build_hooks(self, hooks))
        return self.status()

    def model(self, device: Optional[torch.device] = None, which: str = "best") -> SegmentationModel:
        """The model of the best (or ``which="last"``) checkpoint, loaded once per Training and
        checkpoint (the backbone must resolve to the weights it trained on)."""
        if which not in self._models:
            self._models[which] = load_trained(self.cfg, self.dir / f"{which}.pt")
        model = self._models[which]
        return model if device is None else model.to(device)
