"""Local worker processes: ``ablate --workers N`` runs a grid's task in N processes of this machine.

Each worker is a fresh interpreter (multiprocessing's spawn context: a forked process cannot use CUDA
once its parent has) that runs the task object a Slurm array task runs (``segtricks.runners.tasks``);
the workers share the grid by claiming its cells through the tracking store. With several GPUs each
worker sees one of them (``CUDA_VISIBLE_DEVICES``, in turn). Workers print to this terminal.

Kills: a worker that dies (killed, out of memory) leaves its run RUNNING in the name of a process that
no longer exists, so that another worker, or the next invocation, takes it over at once
(``segtricks.tracking.claims.worker_gone``) and resumes its training from ``last.pt``. The parent only
waits: killed, it leaves the workers running to the end; Ctrl-C in the terminal reaches every worker,
and each leaves its run to be resumed.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from segtricks.tracking.connect import exit_on_environment_error


@dataclass
class Outcome:
    """How a worker ended: its exit status (negative: the signal that killed it) and what its task
    returned (None when it did not return)."""

    pid: int
    exit_code: int
    result: Any = None


def gpu_environments(n: int) -> List[Dict[str, str]]:
    """One GPU per worker, in turn, when this machine has several (among those visible to this process)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) < 2:
        return [{} for _ in range(n)]
    return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(n)]


def work(task: Callable, job: Any, env: Dict[str, str], results) -> None:
    """A worker process: its GPU (before anything initialises CUDA), the task, its result to the parent.
    A store failure or a full disk is one line and an exit status, as the command's own; a bug keeps
    its traceback."""
    os.environ.update(env)
    try:
        result = task(job)
    except KeyboardInterrupt:  # Ctrl-C reached every worker; each one's run is resumed by the next invocation
        sys.exit(130)
    except Exception as exc:
        sys.exit(exit_on_environment_error(exc, job.uri))
    try:
        results.send(result)
    except BrokenPipeError:  # the parent is gone: the results are in the store all the same
        pass


def run_workers(task: Callable, job: Any, n: int) -> List[Outcome]:
    """``task(job)`` in ``n`` worker processes at once; returns when every one has ended."""
    context = multiprocessing.get_context("spawn")
    sys.stdout.flush()  # what this process printed comes before what the workers print
    started = []
    for i, env in enumerate(gpu_environments(n)):
        receiving, sending = context.Pipe(duplex=False)
        process = context.Process(target=work, args=(task, job, env, sending), name=f"segtricks worker {i + 1}")
        process.start()
        sending.close()  # the worker holds the only sending end: the parent reads an end of file if it dies
        started.append((process, receiving))
    outcomes = []
    try:
        for process, receiving in started:
            try:
                result: Optional[Any] = receiving.recv()
            except EOFError:  # it ended without a result
                result = None
            process.join()
            outcomes.append(Outcome(process.pid, process.exitcode, result))
    except KeyboardInterrupt:
        for process, _ in started:  # the terminal's Ctrl-C reached them too: let them leave their runs
            process.join()
        raise
    for i, outcome in enumerate(outcomes):
        if outcome.exit_code < 0:
            print(f"warning: worker {i + 1} of {n} (pid {outcome.pid}) was killed by "
                  f"{signal.Signals(-outcome.exit_code).name}; the run it held is resumed by another worker or "
                  f"by the next run of this command", file=sys.stderr)
    return outcomes
