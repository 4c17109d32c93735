"""Who holds a run: the worker's identity, its heartbeat, and when a claim is dead.

A worker owns a cell's run while its ``heartbeat`` tag (unix seconds, refreshed by a background
thread) is fresh; a RUNNING run whose heartbeat is older than ``STALE_AFTER_S`` belongs to a dead
worker and is resumed by whoever finds it. Two workers that create a run for the same cell at once:
the earlier claim (``claimed_at``, then run id) wins, and the other run is marked KILLED and deleted
(``Store.claim`` says why its claim time is taken only once the run is in the store).
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from typing import Dict, Optional

from segtricks.tracking import tags

# A claim is refreshed every HEARTBEAT_S and expires STALE_AFTER_S after the last refresh.
HEARTBEAT_S = float(os.environ.get("SEGTRICKS_HEARTBEAT_S", 15))
STALE_AFTER_S = float(os.environ.get("SEGTRICKS_STALE_AFTER_S", 90))
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def takeover_tag() -> str:
    """This worker's tag on a run it takes over (MLflow tag keys take no ``:``)."""
    return tags.TAKEOVER + re.sub(r"[^\w.-]", "_", WORKER)


def slurm_job() -> Optional[str]:
    """This process's Slurm job (``<array job>_<task>`` for array tasks), None outside Slurm. Stable
    across requeues: a requeued task has the same id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def worker_tags() -> Dict[str, str]:
    """Who holds a run: ``worker`` (host:pid), and inside Slurm the job (stable across requeues) and
    the GPUs Slurm gave it."""
    found = {tags.WORKER: WORKER, tags.SLURM_JOB: slurm_job(),
             tags.CUDA_VISIBLE_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES")}
    return {k: v for k, v in found.items() if v}


def is_live(run) -> bool:
    """RUNNING with a fresh heartbeat: a worker is on it right now. Not live, whatever the heartbeat:
    a run whose worker ran on this machine and whose process is gone, and a run of this very Slurm
    job (an earlier attempt of a requeued task): those are taken over at once."""
    beat = float(run.data.tags.get(tags.HEARTBEAT, 0))
    mine = slurm_job() is not None and run.data.tags.get(tags.SLURM_JOB) == slurm_job()
    return run.info.status == "RUNNING" and time.time() - beat < STALE_AFTER_S and not worker_gone(run) and not mine


def worker_gone(run) -> bool:
    """The run's recorded worker (``host:pid``) ran on this host and that process no longer exists."""
    host, _, pid = run.data.tags.get(tags.WORKER, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, owned by another user
        pass
    return False


class Heartbeat:
    """Refreshes a run's ``heartbeat`` tag in the background while a worker holds the cell."""

    def __init__(self, run) -> None:
        self.run = run  # a segtricks.tracking.store.RunLog
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.run.set_tags({tags.HEARTBEAT: time.time()})
            except Exception:  # a missed beat only risks a takeover after STALE_AFTER_S
                pass

    def __enter__(self) -> "Heartbeat":
        self.run.set_tags({tags.HEARTBEAT: time.time(), **worker_tags()})
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
