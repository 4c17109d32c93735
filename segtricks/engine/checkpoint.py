"""Atomic checkpoint files: a killed process leaves the previous checkpoint intact, never half a file.

Torch is imported by the two functions that use it: ``NoSpaceError`` is caught by code that must
not import torch (``segtricks.tracking.store``, which ``analysis`` reads MLflow through; the CLIs).
"""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any


class NoSpaceError(OSError):
    """The disk filled up while a checkpoint was written; the previous checkpoint is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def save_atomic(obj: Any, path: Path) -> None:
    """Serialise in memory, write to a temporary file beside ``path``, flush it to disk, then rename
    over ``path``. Serialising first turns a full disk into a plain ``OSError(ENOSPC)`` from the
    write (torch.save writing straight to the file reports it as an opaque RuntimeError)."""
    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint existed"
            raise NoSpaceError(exc.errno, f"no space left writing {path} ({kept}); free space and rerun, "
                               f"the training resumes from its last checkpoint") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)  # only left over when the write failed


def load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
