"""What one invocation does with each cell of a grid, read from the runs the tracking store holds.

Planning only: nothing here starts a run. ``plan`` gives every cell an ``Action`` from its runs (found
by config hash), and each worker plans again after every cell it runs, since other workers change what
is left. ``prepare`` is what every launcher (``segtricks.runners.launch``) does first, once: the store
and the grid's experiment, the plan, and the checks that refuse a grid before any run exists.

Cells that differ only in post-processing share one training and form a *training group*
(``group_key``): its cell without post-processing trains first, the others evaluate its model. A
Slurm array task runs one group (``training_groups``). The grid's closing summary is read from the
same runs (``rows_from_store``, ``print_summary``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from enum import Enum
from typing import Dict, List, Optional

from segtricks.engine.training import State
from segtricks.method.tricks import post_trick_names
from segtricks.runners import preflight
from segtricks.spec.grid import Cell, Grid
from segtricks.spec.vocabulary import SUMMARY_METRICS
from segtricks.tracking import claims, tags
from segtricks.tracking.store import Store


class Action(Enum):
    """What one invocation will do with a cell."""

    TRAIN = "train+evaluate"
    EVALUATE = "evaluate"  # the training is complete, or another cell of the grid trains it
    EVALUATE_MAPS = "evaluate-maps"
    RESUME = "resume"  # a dead worker's run, continued in place
    WAIT = "wait"  # another worker holds the cell, or the training it shares
    SKIP = "skip"


@dataclass
class Step:
    cell: Cell
    action: Action
    reason: str
    run_id: Optional[str] = None


def group_key(cell: Cell) -> str:
    """The training group of a cell: its training hash (a cell scoring precomputed maps trains
    nothing and is a group of its own, by config hash)."""
    return cell.training_hash if cell.trains else cell.config_hash


def ordered(cells: List[Cell]) -> List[Cell]:
    """Group cells by training; in each group the cell without post-processing trains first."""
    groups: Dict[str, List[Cell]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    out = []
    for group in groups.values():
        out += sorted(group, key=lambda c: (len(post_trick_names(c.cfg.tricks)) > 0, cells.index(c)))
    return out


def plan(grid: Grid, runs: Dict[str, list], force: bool, rerun_failed: bool,
         since_ms: Optional[int] = None) -> List[Step]:
    """The action of every cell, given its runs (by config hash) in the store. The first cell of each
    training group trains; the others evaluate its model, or wait while a live worker trains it.
    With ``force``, FINISHED runs started before ``since_ms`` (the invocation) do not count as done."""
    steps, trainer_of = [], {}
    live_trainings = {r.data.tags.get(tags.TRAINING_HASH) for rs in runs.values() for r in rs if claims.is_live(r)}
    for cell in ordered(grid.cells):
        mine = runs.get(cell.config_hash, [])
        done = [r for r in mine if r.info.status == "FINISHED"
                and (not force or since_ms is not None and r.info.start_time >= since_ms)]
        stale = [r for r in mine if r.info.status == "RUNNING" and not claims.is_live(r)]
        live = [r for r in mine if claims.is_live(r)]
        failed = [r for r in mine if r.info.status in ("FAILED", "KILLED")]
        if cell.trains:
            trainer_of.setdefault(cell.training_hash, cell.name)
        shares = cell.trains and trainer_of[cell.training_hash] != cell.name
        complete = cell.trains and cell.training.status().state is State.COMPLETE
        if done:
            steps.append(Step(cell, Action.SKIP, f"done (run {done[-1].info.run_id[:8]})"))
        elif live:
            beat = time.time() - float(live[0].data.tags.get(tags.HEARTBEAT, 0))
            steps.append(Step(cell, Action.WAIT, f"run {live[0].info.run_id[:8]} of worker "
                              f"{live[0].data.tags.get(tags.WORKER, '?')}: last heartbeat {beat:.0f} s ago, taken "
                              f"over if silent for {claims.STALE_AFTER_S:.0f} s", live[0].info.run_id))
        elif rerun_failed and not failed and not stale:
            steps.append(Step(cell, Action.SKIP, "not failed"))
        elif stale:
            steps.append(Step(cell, Action.RESUME, f"resume run {stale[-1].info.run_id[:8]} left by a dead worker",
                              stale[-1].info.run_id))
        elif not cell.trains:
            steps.append(Step(cell, Action.EVALUATE_MAPS, f"score maps in {cell.cfg.maps}"))
        elif complete:
            steps.append(Step(cell, Action.EVALUATE, "training already complete"))
        elif shares and cell.training_hash in live_trainings:
            steps.append(Step(cell, Action.WAIT, f"waits for the training of {trainer_of[cell.training_hash]}"))
        elif shares:
            steps.append(Step(cell, Action.EVALUATE, f"model of {trainer_of[cell.training_hash]}"))
        else:
            steps.append(Step(cell, Action.TRAIN, "new training"))
    return steps


def training_groups(steps: List[Step]) -> List[List[str]]:
    """Cell names per training group that still has a cell to run."""
    groups: Dict[str, List[Step]] = {}
    for s in steps:
        groups.setdefault(group_key(s.cell), []).append(s)
    return [[s.cell.name for s in group] for group in groups.values()
            if any(s.action is not Action.SKIP for s in group)]


def missing_by_cell(steps: List[Step], check: preflight.Preflight) -> Dict[str, List[preflight.Missing]]:
    """What each cell that will run needs and this machine lacks (``segtricks.runners.preflight``)."""
    return {s.cell.name: check.missing(s.cell.cfg, trains=s.cell.trains and
                                       s.cell.training.status().state is not State.COMPLETE)
            for s in steps if s.action is not Action.SKIP}


def actions(steps: List[Step]) -> Dict[str, str]:
    """Cell name → its action's value: what the estimate and the disk check price."""
    return {s.cell.name: s.action.value for s in steps}


def print_plan(grid: Grid, steps: List[Step], missing: Dict[str, List[preflight.Missing]],
               downloads: Dict[str, str]) -> None:
    """``--dry-run``'s table: each cell's hashes, training state and action, and what it would miss."""
    trainings = {s.cell.training_hash for s in steps if s.cell.trains}
    print(f"grid {grid.name} ({grid.path}): {len(steps)} cells, {len(trainings)} trainings")
    width = max(len(s.cell.name) for s in steps)
    for s in steps:
        training = f"train {s.cell.training_hash[:12]} ({s.cell.training.status()})" if s.cell.trains else "maps"
        fails = ", ".join(m.what for m in missing.get(s.cell.name, []))
        print(f"  {s.cell.name:<{width}}  {s.cell.config_hash[:12]}  {training:<40}  {s.action.value:<14} {s.reason}"
              + (f"  will fail: missing {fails}" if fails else ""))
    if any(missing.values()):
        print(preflight.report(missing).replace("; nothing was run:", ":"))
    for what, where in downloads.items():
        print(f"  {what}: not on this machine; the run downloads it from {where}")


# --- before a launch -------------------------------------------------------------------------------

@dataclass
class Prepared:
    """A grid ready to launch: its store and experiment exist, every cell has its step, and what the
    cells to run need is on this machine."""

    grid: Grid
    uri: str
    store: Store
    exp_id: str
    steps: List[Step]
    since_ms: Optional[int]  # with --force, when this invocation began: runs finished before it are history


def prepare(grid: Grid, uri: str, force: bool, rerun_failed: bool, output_root: str) -> Prepared:
    """Open the store and create the grid's experiment (before any worker or task starts, so that they
    do not race to create it), plan, refuse what is missing (``preflight``, exit 2) and warn when the
    evaluation caches will not fit on the disk."""
    store = Store(uri)
    exp_id = store.experiment(grid.name, grid.description)
    since_ms = int(time.time() * 1000) if force else None
    steps = plan(grid, store.runs_by_hash(exp_id), force, rerun_failed, since_ms)
    preflight.refuse_missing(missing_by_cell(steps, preflight.Preflight()))
    warn_disk(steps, Path(output_root))
    return Prepared(grid, uri, store, exp_id, steps, since_ms)


def warn_disk(steps: List[Step], root: Path) -> None:
    """Say before the grid starts when its evaluation caches will not fit (``preflight.disk_warning``)."""
    line = preflight.disk_warning([s.cell for s in steps], actions(steps), root)
    if line:
        print(line, file=sys.stderr)


# --- the summary ------------------------------------------------------------------------------------

def rows_from_store(runs: Dict[str, list], grid: Grid) -> List[dict]:
    """Summary rows from each cell's newest run (``runs`` by config hash: what Slurm tasks logged)."""
    rows = []
    for cell in grid.cells:
        mine = runs.get(cell.config_hash, [])
        if not mine:
            rows.append({"cell": cell.name, "status": "no run"})
            continue
        run = mine[-1]
        rows.append({"cell": cell.name, "status": run.info.status, "run_id": run.info.run_id, **run.data.metrics})
    return rows


def print_summary(grid: Grid, rows: List[dict]) -> None:
    """One line per cell: its status, its headline metrics on every dataset, its run."""
    keys = sorted({k for r in rows for k in r if k.split(".")[-1] in SUMMARY_METRICS and "." in k})
    header = ["cell", "status", *keys, "run"]
    lines = [header] + [[r["cell"], r["status"], *[f"{r[k]:.3f}" if k in r else "" for k in keys],
                         (r.get("run_id") or "")[:8] + (f" {r['note']}" if r.get("note") else "")] for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print(f"\nsummary of grid {grid.name}:")
    for line in lines:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths)))
