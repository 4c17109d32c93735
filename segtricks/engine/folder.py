"""A training's folder on disk, named in one place: what ``Training`` writes and every reader finds.

    <output root>/trainings/<training hash[:16]>/   config.yaml  last.pt  best.pt  status.json  predictions/
    <output root>/keys/                               the backbone-keys cache every training of the root shares

``config.yaml`` is the resolved config, ``last.pt`` / ``best.pt`` the checkpoints (their contents:
``segtricks.engine.checkpoint.Checkpointer``), ``status.json`` the summary ``Training.status()`` reads
(``TrainingSummary``, written and read here), ``predictions/`` the training's mask cache
(``segtricks.evaluation.prediction_cache``). Torch-free: ``segtricks.cache`` lists folders and
``segment`` checks one before torch is imported.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from segtricks.errors import BadInput
from segtricks.files import write_atomic

TRAININGS = "trainings"  # under an output root: one folder per training hash
KEYS = "keys"  # under an output root: the backbone-keys cache


@dataclass(frozen=True)
class TrainingSummary:
    """``status.json``: what ``Training.status()`` reads instead of unpickling weights. ``files``: the
    checkpoints' sizes when it was written (a size that differs means a kill between writes)."""

    training_hash: str
    weights_id: str
    epochs_done: int
    best_epoch: int
    best_score: float
    history: List[Dict[str, float]]
    files: Dict[str, int]


@dataclass(frozen=True)
class TrainingFolder:
    """The paths of one training's folder (see the module docstring)."""

    dir: Path

    @classmethod
    def in_root(cls, output_root: str | Path, training_hash: str) -> "TrainingFolder":
        """The folder every config of ``training_hash`` shares under ``output_root``."""
        return cls(Path(output_root) / TRAININGS / training_hash[:16])

    @staticmethod
    def all_in_root(output_root: str | Path) -> Dict[str, "TrainingFolder"]:
        """Every training folder under ``output_root``, by folder name (the hash's first 16 digits)."""
        folder = Path(output_root) / TRAININGS
        if not folder.is_dir():
            return {}
        return {d.name: TrainingFolder(d) for d in sorted(folder.iterdir()) if d.is_dir()}

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last``."""
        return {"best": self.best, "last": self.last}[which]

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def predictions(self) -> Path:
        """The training's mask cache."""
        return self.dir / "predictions"

    @property
    def keys(self) -> Path:
        """``<root>/keys``: the backbone-keys cache that every training of an output root shares (for a
        folder outside ``<root>/trainings/``, a ``keys`` folder beside it)."""
        return self.dir.parent.parent / KEYS if self.dir.parent.name == TRAININGS else self.dir.parent / KEYS

    def is_finished(self, which: str = "best") -> bool:
        return self.config.is_file() and self.checkpoint(which).is_file()

    def require_finished(self, flag: str, which: str = "best") -> None:
        """A ``BadInput`` naming the first missing file, for a command given this folder by ``flag``."""
        for path in (self.config, self.checkpoint(which)):
            if not path.is_file():
                raise BadInput(f"{flag} {self.dir}: {path} does not exist: is {self.dir} a finished training folder?")

    def checkpoint_sizes(self) -> Dict[str, int]:
        """The size of each checkpoint file, -1 for a missing one."""
        return {p.name: p.stat().st_size if p.exists() else -1 for p in (self.last, self.best)}

    def write_summary(self, summary: TrainingSummary) -> None:
        write_atomic(self.status, json.dumps(asdict(summary), indent=1))

    def read_summary(self) -> Optional[TrainingSummary]:
        """``status.json``, or None when it is missing or unreadable (``Training.status()`` rebuilds it)."""
        try:
            return TrainingSummary(**json.loads(self.status.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def backbone(self) -> Tuple[Optional[str], Optional[str]]:
        """(backbone name, weights id) from ``config.yaml`` and ``status.json``; None for what is
        missing or unreadable (a folder removed meanwhile, a training that never finished an epoch)."""
        summary = self.read_summary()
        return (_read(self.config, lambda t: yaml.safe_load(t)["backbone"]["name"]),
                summary.weights_id if summary else None)


def _read(path: Path, parse):
    try:
        return parse(path.read_text())
    except (OSError, EOFError, ValueError, yaml.YAMLError, KeyError, TypeError):
        return None
