"""Files that other processes read while they are written: atomic replacement and an advisory lock.

A reader must never see half a file (a killed writer, a full disk) and two writers must not interleave:
checkpoints, a training's ``status.json``, evaluation caches and a new SQLite store are all written to a
temporary file beside their place and renamed over it (``os.replace`` is atomic on one filesystem), and
the creation of shared files is serialised by ``file_lock``. Temporary names carry host and pid
(``temp_path``), so that ``python -m segtricks.cache`` can tell a live writer's file from a dead one's.
Torch-free.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

from segtricks.errors import Unavailable

HOST = socket.gethostname()


class NoSpaceError(Unavailable, OSError):
    """The disk (or quota) filled up while a file was written; the file's previous version is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.<name>.<host>.<pid>.tmp`` (a reader
    that parses it must know the name's suffix: host names have dots too, see ``segtricks.cache``)."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.tmp")


def write_atomic(path: Path, content: Union[bytes, str, Callable[[Path], None]], fsync: bool = True) -> None:
    """Replace ``path`` by ``content`` (bytes, text, or a function that writes a file at the path it is
    given) in one rename: readers see the old file or the new one, never a part. ``fsync``: flush the
    data to disk before the rename, so that a power cut cannot leave the new name on empty blocks.
    The temporary file is removed when anything fails; a full disk or quota is a ``NoSpaceError``
    naming the file, any other error propagates unchanged."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        raise NoSpaceError(exc.errno, f"no space left writing {path} ({kept}); free space and rerun") from None
    finally:
        tmp.unlink(missing_ok=True)  # only left when something failed before the rename


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the duration of the block: how
    workers started at once serialise creating a shared file (an SQLite store, an Optuna database)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
