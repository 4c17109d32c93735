"""Atomic checkpoint files: a killed process leaves the previous checkpoint intact, never half a file.

Torch is imported by the two functions that use it, so that importing this module loads none.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

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


def load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
