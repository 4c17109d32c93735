"""What ``ablate`` and ``tune`` do once their arguments and files are known to be valid.

A grid: ``--dry-run`` plans against the store as it is and changes nothing. Otherwise ``preflight.prepare``
(the store, the grid's experiment, the plan and the checks, once), then one launcher runs the grid's
``tasks.GroupTask``: in this process, in ``--workers N`` local processes (``segtricks.launchers.local``),
or as Slurm array tasks (``segtricks.launchers.slurm_submit``). A study: its checks, then ``tune`` here or
its Slurm workers. Store failures (locked, read-only, unreachable) are one line naming the store.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional

from optuna.trial import TrialState

from segtricks import errors
from segtricks.runtime.device import resolve_device
from segtricks.launchers import local, slurm
from segtricks.estimate.cost import estimate_grid
from segtricks.estimate.report import format_estimate
from segtricks.files import free_bytes
from segtricks.runners import preflight
from segtricks.runners.plan import (Step, actions, load_grid, counted, grouped, plan, print_next_steps_of_grid,
                                    print_summary)
from segtricks.runners.preflight import Missing, Prepared, missing_by_cell, prepare, warn_disk
from segtricks.launchers.slurm_submit import submit_grid, submit_study
from segtricks.runners.study_runner import (best_override, default_storage, estimate_study, open_study,
                                            print_next_steps, print_study_summary, tune)
from segtricks.runners.tasks import GridJob, GroupTask
from segtricks.config.grid import Grid
from segtricks.config.study import StudySpec
from segtricks.tracking.connect import exit_on_environment_error
from segtricks.tracking.store import Store
from segtricks.tracking.uri import sqlite_path, tracking_uri


def launch_grid(args: argparse.Namespace, opts: Optional[slurm.SlurmOptions]) -> int:
    """``python -m segtricks.ablate``: ``opts`` given for ``--launcher slurm``."""
    grid = load_grid(args.grid, args.set, args.output_root, args.seeds)
    uri = tracking_uri(args.tracking_uri)
    preflight.check_output_root(args.output_root)
    preflight.check_devices(args.device, [c.cfg for c in grid.cells])
    try:
        if args.dry_run:
            return dry_run(grid, uri, args)
        if opts is not None:  # everything that can refuse the submission, before the store is created
            slurm.preflight(opts, {"MLflow store": sqlite_path(uri)})
        prepared = prepare(grid, uri, args.force, args.rerun_failed, args.output_root)
        job = GridJob(args.grid, list(args.set), list(grid.seeds) or None, args.output_root, uri, None, args.force,
                      args.rerun_failed, prepared.since_ms, args.fail_fast, args.device)
        if opts is not None:
            return submit_grid(prepared, job, opts)
        return run_here(prepared, job, args.workers)
    except errors.SegtricksError:
        raise
    except Exception as exc:  # MLflow's and SQLite's own errors, as one line naming the store
        return exit_on_environment_error(exc, uri)


def dry_run(grid: Grid, uri: str, args: argparse.Namespace) -> int:
    """``--dry-run``: the plan against the store as it is, changing nothing. No store, experiment or
    run is created (an absent store or experiment plans every cell as new) and no weights are
    downloaded. With ``--estimate``, each cell's time, memory and disk (``segtricks.runners.estimate``)."""
    path = sqlite_path(uri)
    runs: Dict[str, list] = {}
    exp_id = None
    if path is None or path.is_file():  # opening an absent SQLite store would create it
        store = Store(uri)
        exp_id = store.experiment(grid.name, create=False)
        runs = store.runs_by_hash(exp_id) if exp_id is not None else {}
    if exp_id is None:
        print(f"(no experiment {grid.name!r} in {uri}: no cell has a run yet)")
    since_ms = int(time.time() * 1000) if args.force else None
    steps = plan(grid, runs, args.force, args.rerun_failed, since_ms)
    check = preflight.Preflight(download=False)
    print_plan(grid, steps, missing_by_cell(steps, check), check.downloads)
    if args.estimate:
        est = estimate_grid([s.cell for s in steps], actions(steps), resolve_device(args.device), args.estimate_steps,
                            store_exists=path is None or path.is_file(), remeasure=args.remeasure)
        print(format_estimate(est, free_bytes(Path(args.output_root))))
    else:
        warn_disk(steps, Path(args.output_root))
    return 0


def print_plan(grid: Grid, steps: List[Step], missing: Dict[str, List[Missing]],
               downloads: Dict[str, str]) -> None:
    """``--dry-run``'s table: each cell's hashes, training state and action, and what it would miss;
    with seeds, a line per seed under the cell's name."""
    trainings = {s.cell.training_hash for s in steps if s.cell.trains}
    print(f"grid {grid.name} ({grid.path}): {counted(grid, len(steps))}, {len(trainings)} trainings")
    width = max(len(s.cell.name) for s in steps)
    seed_width = max(len(str(seed)) for seed in grid.seeds) if grid.seeds else 0
    for group in grouped(steps, lambda s: s.cell.name):
        for i, s in enumerate(group):
            name = "" if i else s.cell.name
            seed = f"  seed {s.cell.seed:<{seed_width}}" if grid.seeds else ""
            training = (f"train {s.cell.training_hash[:12]} ({s.cell.training.status()})" if s.cell.trains
                        else "maps" if s.cell.cfg.maps is not None else s.cell.cfg.method)
            fails = ", ".join(m.what for m in missing.get(s.cell.id, []))
            print(f"  {name:<{width}}{seed}  {s.cell.config_hash[:12]}  {training:<40}  {s.action.value:<14} {s.reason}"
                  + (f"  will fail: missing {fails}" if fails else ""))
    if any(missing.values()):
        print(preflight.report(missing).replace("; nothing was run:", ":"))
    for what, where in downloads.items():
        print(f"  {what}: not on this machine; the run downloads it from {where}")


def run_here(prepared: Prepared, job: GridJob, workers: int) -> int:
    """The grid's task in this process, or in ``workers`` local processes; then the summary (exit 1
    when a cell failed or a worker stopped on an error)."""
    grid = prepared.grid
    if workers == 1:
        rows, code = GroupTask()(job), 0
    else:
        outcomes = local.run_workers(GroupTask(), job, workers)
        rows = merged([o.result for o in outcomes if o.result is not None])
        code = max([o.exit_code for o in outcomes if o.exit_code > 0] + [0 if rows else 1])
    print_summary(grid, rows)
    failed = sum(r["status"] == "FAILED" for r in rows)
    print(f"\n{counted(grid, len(rows))}: {sum(r['status'] == 'FINISHED' for r in rows)} run, "
          f"{sum(r['status'] == 'skipped' for r in rows)} skipped, {failed} failed.")
    print_next_steps_of_grid(grid, prepared.uri, prepared.exp_id)
    return 1 if failed else code


def merged(rows_of_workers: List[List[dict]]) -> List[dict]:
    """One summary row per cell (per replica, with seeds) from every worker's rows: the worker that ran
    a cell reports it, the others saw it done and skipped it."""
    by_run: Dict[tuple, dict] = {}
    for rows in rows_of_workers:
        for row in rows:
            key = (row["cell"], row["seed"])
            if by_run.get(key, {"status": "skipped"})["status"] == "skipped":
                by_run[key] = row
    return list(by_run.values())


def launch_study(spec: StudySpec, args: argparse.Namespace) -> int:
    """``python -m segtricks.tune``: ``--best``, ``--estimate``, or the study here or as Slurm workers."""
    storage = args.storage or default_storage()
    if not args.best:  # every trial needs the base config's weights and datasets: check before any run
        preflight.check_output_root(args.output_root)
        preflight.check_devices(args.device, [spec.config({})])
        missing = preflight.Preflight(download=not args.estimate).missing(spec.config({}), trains=True)
        preflight.refuse_missing({f"study {spec.name}": missing})
    if args.estimate:
        print(estimate_study(spec, args))
        return 0
    try:
        if args.best:
            study = open_study(spec, storage, create=False)
            if not any(t.state == TrialState.COMPLETE for t in study.trials):
                raise errors.BadInput(f"study {spec.name!r} in {storage} has no completed trial yet")
            print(best_override(study))
            return 0
        if args.launcher == "slurm":
            return submit_study(spec, args, storage, slurm.options_from(args, args.output_root))
        study = tune(spec, storage, args.n_trials, args.tracking_uri, args.output_root, args.device)
    except errors.SegtricksError:
        raise
    except Exception as exc:  # MLflow's and SQLite's own errors, as one line naming the store
        return exit_on_environment_error(exc, tracking_uri(args.tracking_uri))
    print_study_summary(spec, study, storage)
    print_next_steps(spec, study, args, storage)
    return 0
