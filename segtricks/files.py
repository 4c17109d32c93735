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
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Union

from segtricks.errors import BadInput, Unavailable

HOST = socket.gethostname()


class NoSpaceError(Unavailable, OSError):
    """The disk (or quota) filled up while a file was written; the file's previous version is intact."""

    def __str__(self) -> str:
        return str(self.strerror)


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.<name>.<host>.<pid>.tmp`` (a reader
    that parses it must know the name's suffix: host names have dots too, see ``segtricks.cache``)."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.tmp")


class TempName(NamedTuple):
    """What a temporary file's name says: the file it becomes, and its writer (host and pid; None in
    names from before they were recorded)."""

    target: str
    host: Optional[str]
    pid: Optional[int]


def parse_temp_name(name: str, suffixes: Sequence[str]) -> Optional[TempName]:
    """The parts of ``temp_path``'s name for a file ending in one of ``suffixes`` (e.g. ``.npy``), or
    None for another name. Anchored at the suffix: host names have dots too, and unanchored
    ``.x.npy.node1.5.tmp`` would read as file ``x`` written on host ``npy.node1``. Older names had
    no host (``.<file>.<pid>.tmp``) or neither (``.<file>.tmp``)."""
    ends = "|".join(re.escape(s) for s in suffixes)
    match = re.fullmatch(rf"\.(?P<name>.+?(?:{ends}))\.(?:(?:(?P<host>.+)\.)?(?P<pid>\d+)\.)?tmp", name)
    if match is None:
        return None
    return TempName(match["name"], match["host"], int(match["pid"]) if match["pid"] else None)


def writer_alive(temp: TempName) -> Optional[bool]:
    """Whether a temporary file's writer still runs; None when it ran on another host (not checkable
    from here). A name without a pid is from before pids were recorded: its writer is long gone."""
    if temp.host not in (None, HOST):
        return None
    if temp.pid is None:
        return False
    try:
        os.kill(temp.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_dead_temps(folder: Path, suffixes: Sequence[str]) -> List[Path]:
    """Remove the temporary files in ``folder`` of writers on this host that are gone (a kill -9 during
    a write leaves them; at a large dataset's scale they are gigabytes): the files removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        temp = parse_temp_name(path.name, suffixes)
        if temp is not None and writer_alive(temp) is False:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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


def write_png(path: Path, array) -> None:
    """An 8-bit array (HxW, or HxWx3) as a PNG at ``path``, atomically (``write_atomic``): the masks
    ``segment`` writes and the pseudo-masks a teacher exports, whole or absent after a kill."""
    from PIL import Image  # only where a PNG is written: this module is imported by torch-free commands

    write_atomic(Path(path), lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


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


# why a probe file could not be created, in the words of the error line
_NOT_WRITABLE = {errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device"}


def check_writable_folder(given: Union[str, Path], flag: str) -> None:
    """Refuse (``BadInput``, one line naming ``flag``) a folder a command will write into that is a
    file, cannot be created, or is not writable, before the command's work starts. It must be a
    folder, or be creatable (the nearest existing folder above it is one), and writable there: a file
    is created in it and removed at once (nothing is left), since permission bits do not tell (root
    ignores them; a read-only mount, sysfs or a root-squashing NFS server refuse root all the same)."""
    path = Path(given).expanduser()
    folder = path
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    prefix = f"{flag} {given}: " + ("" if folder == path else f"cannot be created: {folder} ")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "is not a folder"
        raise BadInput(f"{prefix}{what}; choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".segtricks-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = _NOT_WRITABLE.get(exc.errno, exc.strerror)
        raise BadInput(f"{prefix}{'' if folder == path else 'is '}not writable ({reason}); "
                       f"choose another {flag}") from None


def free_bytes(path: Path) -> float:
    """Free space on the filesystem that holds ``path`` (its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return float(shutil.disk_usage(path).free)
