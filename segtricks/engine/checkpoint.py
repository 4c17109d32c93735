"""A training's checkpoints: atomic files (a killed process leaves the previous checkpoint intact, never
half a file), and ``Checkpointer``, the one reader and writer of what they hold.

    best.pt   head, epoch, training_hash, weights_id
    last.pt   the same, and optimizer, history, best_score, best_epoch (and scaler, under fp16)

Torch is imported by the functions that use it, so that importing this module loads none.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

from segtricks.engine.folder import TrainingFolder

from segtricks.errors import BadInput
from segtricks.files import NoSpaceError, write_atomic


def save_atomic(obj: Any, path: Path) -> None:
    """Serialise in memory, then replace ``path`` in one rename (``segtricks.files.write_atomic``: a
    temporary file beside it, flushed to disk first). Serialising first turns a full disk into a plain
    ``OSError(ENOSPC)`` from the write (torch.save writing straight to the file reports it as an opaque
    RuntimeError), raised here as a ``NoSpaceError`` that says the training resumes."""
    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        write_atomic(path, buffer.getbuffer())
    except NoSpaceError as exc:
        kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint existed"
        raise NoSpaceError(exc.errno, f"no space left writing {path} ({kept}); free space and rerun, "
                           f"the training resumes from its last checkpoint") from None


class CorruptCheckpoint(BadInput):
    """A checkpoint file that does not load: cut short (a copy or a disk that failed), overwritten, or
    not a checkpoint at all. ``reason`` is the loader's own error, in one line."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path} does not load ({reason}): the file is damaged or not a segtricks "
                         f"checkpoint; train again (rerun the command that trained it), or restore the file")


def load(path: Path) -> Any:
    """The contents of a checkpoint on the CPU; a missing file is ``FileNotFoundError``, any other
    failure (a truncated zip, a pickle error) a ``CorruptCheckpoint`` naming it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # every unpickling, zip or read failure means the same: the file is damaged
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CorruptCheckpoint(path, f"{type(exc).__name__}: {first}" if first else type(exc).__name__) from None


@dataclass
class Resumed:
    """What ``last.pt`` says of the loop: the next epoch, the history so far, the best score and epoch."""

    epoch: int
    history: List[Dict[str, float]]
    best_score: float
    best_epoch: int
    weights_id: str
    training_hash: str


class Checkpointer:
    """Writes and reads the checkpoints of one training folder (the module docstring lists their keys):
    no other module knows what a checkpoint holds."""

    def __init__(self, folder: TrainingFolder, training_hash: str) -> None:
        self.folder, self.training_hash = folder, training_hash

    def save_epoch(self, model, optimizer, scaler, epoch: int, history: List[Dict[str, float]], best_score: float,
                   best_epoch: int, improved: bool) -> None:
        """``best.pt`` (when the epoch improved), then ``last.pt``, each atomically."""
        head, weights = model.head.state_dict(), model.backbone.weights_id
        common = {"head": head, "epoch": epoch, "training_hash": self.training_hash, "weights_id": weights}
        if improved:
            save_atomic(common, self.folder.best)
        save_atomic({**common, "optimizer": optimizer.state_dict(), "history": history, "best_score": best_score,
                     "best_epoch": best_epoch, **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})},
                    self.folder.last)

    def resume(self, model, optimizer, scaler) -> Resumed:
        """Load ``last.pt`` into the head, the optimizer (and an enabled loss scaler); the loop state."""
        saved = load(self.folder.last)
        model.head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler.is_enabled() and "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        return self._resumed(saved)

    def read_last(self) -> Resumed:
        """``last.pt``'s loop state without a model (``status.json`` rebuilt from it)."""
        return self._resumed(load(self.folder.last))

    def check_best(self) -> None:
        """Load ``best.pt`` only to know that it loads (``CorruptCheckpoint`` otherwise)."""
        load(self.folder.best)

    @staticmethod
    def _resumed(saved: Dict[str, Any]) -> Resumed:
        return Resumed(saved["epoch"] + 1, saved["history"], saved["best_score"], saved["best_epoch"],
                       saved["weights_id"], saved["training_hash"])



@dataclass
class TrainedHead:
    head: Dict[str, Any]  # the head's state dict
    weights_id: str  # the backbone weights it was trained on


def trained_head(path: Path) -> TrainedHead:
    """The trained head in a checkpoint file (a folder's ``best.pt`` or ``last.pt``, or the copy an
    MLflow model holds)."""
    saved = load(path)
    return TrainedHead(saved["head"], saved["weights_id"])
