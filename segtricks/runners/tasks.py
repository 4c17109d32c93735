"""A worker's work as a picklable job and the task that runs it: the same objects wherever they run.

``launch`` runs a ``GroupTask`` in this process, in ``--workers N`` local processes
(``segtricks.launchers.local``) or as Slurm array tasks (``segtricks.launchers.slurm_submit``), and a study's
Slurm workers run ``StudyTask``. A task rereads the grid or study from its file with the flags it was
given (a job carries names and paths, never a loaded grid), so that a fresh interpreter on any node
builds the same cells and config hashes.

Preemption: the tasks are ``submitit.helpers.Checkpointable``. On Slurm's signal submitit requeues the
task with the same job, and it resumes: the grid task takes its earlier attempt's run as its own (same
``slurm_job`` tag) and continues the training from ``last.pt``; the study task continues the study
(the interrupted trial is failed by Optuna's heartbeat and retried).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import submitit
from optuna.trial import TrialState

from segtricks.runners.grid_runner import run_grid
from segtricks.runners.study_runner import tune
from segtricks.runners.plan import load_grid
from segtricks.config.study import load_study


@dataclass
class GridJob:
    """One grid worker's work: which grid (and which of its cells), with what flags and seeds, logged where."""

    grid: str  # grid name, or a YAML path (absolute for Slurm tasks)
    flags: List[str]  # the --set flags
    seeds: Optional[List[int]]  # the seeds the cells are replicated over (--seeds or the file's); None: none
    output_root: str
    uri: str
    cells: Optional[List[str]]  # cell ids (``Cell.id``); None: every cell; a Slurm task: one training group
    force: bool
    rerun_failed: bool
    since_ms: Optional[int]  # with --force, when the invocation began
    fail_fast: bool = False
    device: str = "auto"


class GroupTask(submitit.helpers.Checkpointable):
    """Run a grid worker's loop (``grid_runner.run_grid``) on the job's cells: its summary rows."""

    def __call__(self, job: GridJob) -> List[dict]:
        grid = load_grid(job.grid, job.flags, job.output_root, job.seeds)
        if job.cells is not None:
            grid = dataclasses.replace(grid, cells=[c for c in grid.cells if c.id in job.cells])
        return run_grid(grid, job.uri, job.force, job.rerun_failed, job.fail_fast, job.device, job.since_ms)


@dataclass
class StudyJob:
    """One study worker's work: the ordinary ``tune`` loop on the shared storage."""

    study: str  # study name, or an absolute YAML path
    flags: List[str]
    storage: str
    n_trials: Optional[int]
    uri: str
    output_root: str
    worker: int
    name: Optional[str] = None  # --study-name: the study's name in the storage, when not the file's


class StudyTask(submitit.helpers.Checkpointable):
    """Run a study worker: the number of complete trials when it stops."""

    def __call__(self, job: StudyJob) -> int:
        spec = load_study(job.study, job.flags, job.name)
        study = tune(spec, job.storage, job.n_trials, job.uri, job.output_root, worker=job.worker)
        return sum(t.state == TrialState.COMPLETE for t in study.trials)
