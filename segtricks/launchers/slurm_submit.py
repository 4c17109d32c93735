"""The Slurm launcher: a grid's training groups, or a study's workers, submitted as array tasks.

``ablate --launcher slurm`` submits one array task per *training group* that still has work
(``plan.training_groups``): a task trains once (resuming from ``last.pt``) and evaluates every cell of
its group in the same allocation, so a grid needs no job dependencies. ``tune --launcher slurm
--workers N`` submits N tasks, each running the ordinary ``tune`` loop on the shared study storage.
The tasks are ``segtricks.runners.tasks``'s, which local workers run too; the cluster's checks, the
executor and the wait are ``segtricks.launchers.slurm``'s. With ``--wait`` the tasks are followed and
the results summarised from the stores; without it, what the tasks log reaches the stores as they end.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from segtricks.launchers import slurm
from segtricks.runners.plan import counted, print_next_steps_of_grid, print_summary, rows_from_store, training_groups
from segtricks.runners.preflight import Prepared
from segtricks.runners.study_runner import (check_base_config, journal_path, mlflow_parent, open_study, print_next_steps,
                                            print_study_summary)
from segtricks.runners.tasks import GridJob, GroupTask, StudyJob, StudyTask
from segtricks.config.study import StudySpec
from segtricks.tracking.store import Store
from segtricks.tracking.uri import sqlite_path, tracking_uri


def absolute(name_or_path: str) -> str:
    """A grid or study reference that a task on any node reads alike: a name, or an absolute path."""
    return str(Path(name_or_path).resolve()) if name_or_path.endswith((".yaml", ".yml")) else name_or_path


def submit_grid(prepared: Prepared, job: GridJob, opts: slurm.SlurmOptions) -> int:
    """One array task per training group with work; prints the job ids, and with ``--wait`` follows
    them and prints the summary (exit 1 when a cell did not finish or a task failed)."""
    grid, store = prepared.grid, prepared.store
    groups = training_groups(prepared.steps)
    if not groups:
        print(f"grid {grid.name}: nothing to submit, every cell is done")
        print_summary(grid, rows_from_store(store.runs_by_hash(prepared.exp_id), grid))
        return 0
    job = dataclasses.replace(job, grid=absolute(job.grid), output_root=str(Path(job.output_root).resolve()))
    jobs = [dataclasses.replace(job, cells=cells) for cells in groups]
    submitted = slurm.executor(opts, f"segtricks-{grid.name}").map_array(GroupTask(), jobs)
    print(f"grid {grid.name}: submitted {len(submitted)} Slurm array task(s), one per training group "
          f"(logs: {opts.folder}/<job id>/)")
    for task, cells in zip(submitted, groups):
        print(f"  {task.job_id}  {', '.join(cells)}")
    if not opts.wait:
        print("Results reach the MLflow store as tasks finish; rerunning this command later submits only "
              "what is left, and `python -m analysis.make_tables` reads what is done.")
        return 0
    failures = slurm.wait_for(submitted, f"grid {grid.name}")
    rows = rows_from_store(store.runs_by_hash(prepared.exp_id), grid)
    print_summary(grid, rows)
    for failure in filter(None, failures):
        print(f"error: {failure}", file=sys.stderr)
    failed = sum(r["status"] != "FINISHED" for r in rows)
    print(f"\n{counted(grid, len(rows))}: {len(rows) - failed} finished, {failed} not.")
    print_next_steps_of_grid(grid, prepared.uri, prepared.exp_id)
    return 1 if failed or any(failures) else 0


def submit_study(spec: StudySpec, args, storage: str, opts: slurm.SlurmOptions) -> int:
    """``--workers N`` array tasks on one storage; the study, its MLflow experiment and parent run are
    created first so that the tasks do not race to create them."""
    uri = tracking_uri(args.tracking_uri)
    slurm.preflight(opts, {"MLflow store": sqlite_path(uri),
                           "Optuna storage": sqlite_path(storage) or journal_path(storage)})
    check_base_config(open_study(spec, storage), spec)
    mlflow_parent(Store(uri), spec).finish()
    jobs = [StudyJob(absolute(args.study), list(args.set), storage, args.n_trials, uri,
                     str(Path(args.output_root).resolve()), i, spec.name) for i in range(args.workers)]
    submitted = slurm.executor(opts, f"segtricks-study-{spec.name}").map_array(StudyTask(), jobs)
    print(f"study {spec.name}: submitted {len(submitted)} Slurm array task(s) on {storage} "
          f"(logs: {opts.folder}/<job id>/): {', '.join(j.job_id for j in submitted)}")
    if not opts.wait:
        print(f"Follow it with: python -m segtricks.tune --study {args.study} --storage {storage}"
              + (f" --study-name {args.study_name}" if args.study_name else "") + " --best")
        return 0
    failures = slurm.wait_for(submitted, f"study {spec.name}")
    for failure in filter(None, failures):
        print(f"error: {failure}", file=sys.stderr)
    study = open_study(spec, storage)
    print_study_summary(spec, study, storage)
    print_next_steps(spec, study, args, storage)
    return 1 if any(failures) else 0
