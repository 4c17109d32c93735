"""Atomic checkpoint files: a killed process leaves the previous checkpoint intact, never half a file.

Torch is imported by the two functions that use it, so that importing this module loads none.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

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
