"""What one invocation does with each cell of a grid, read from the runs the tracking store holds.

Planning only: nothing here starts a run. ``plan`` gives every cell an ``Action`` from its runs (found
by config hash), and each worker plans again after every cell it runs, since other workers change what
is left. What every launcher does first, once (the store, the plan and the checks that refuse a grid
before any run exists) is ``segtricks.runners.preflight.prepare``.

Cells that differ only in post-processing share one training and form a *training group*
(``group_key``): its cell without post-processing trains first, the others evaluate its model. A
Slurm array task runs one group (``training_groups``). The grid's closing summary is read from the
same runs (``rows_from_store``, ``print_summary``).

With seeds, a grid's cells are its replicas (``Cell.id`` tells them apart; each seed trains apart), and
the plan and the summary show each cell once with its seeds beneath it (``grouped``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

from segtricks.data.pseudo_masks import PseudoMaskFolder
from segtricks.engine.training import State, Training
from segtricks.method.tricks import post_trick_names
from segtricks.config.grid import Cell, Grid, read_grid
from segtricks.config.schema import METHOD_REGISTRY, Config, config_hash
from segtricks.registry import registered_attributes
from segtricks.config.vocabulary import SUMMARY_METRICS
from segtricks.tracking import claims, tags
from segtricks.tracking.uri import runs_page, tracking_uri


class Action(Enum):
    """What one invocation will do with a cell."""

    TRAIN = "train+evaluate"
    EVALUATE = "evaluate"  # the training is complete, or another cell of the grid trains it
    EVALUATE_MAPS = "evaluate-maps"
    EVALUATE_METHOD = "evaluate-method"  # a training-free method (TokenCut, LOST, Deep Spectral)
    RESUME = "resume"  # a dead worker's run, continued in place
    WAIT = "wait"  # another worker holds the cell, or the training it shares
    SKIP = "skip"


@dataclass
class Step:
    cell: Cell
    action: Action
    reason: str
    run_id: Optional[str] = None
    # runs a dead worker left RUNNING on a cell that is done meanwhile (a killed --force rerun): nobody
    # resumes them, so the worker that plans the cell closes them KILLED
    abandoned: List[str] = field(default_factory=list)


def load_grid(name_or_path: str, flags: Sequence[str] = (), output_root: str = "outputs",
              seeds: Optional[Sequence[int]] = None) -> Grid:
    """``read_grid``, then each cell's (or replica's) ``Training`` (cells differing only in
    post-processing share one)."""
    # The flags apply as given: the command line has refused those overriding an axis (read_grid) unless
    # --force-set, and a Slurm task rereads the grid with the flags it was submitted with.
    grid_file = read_grid(name_or_path, flags, force_set=True, seeds=seeds)
    cells: List[Cell] = []
    trainings: Dict[str, Training] = {}
    by_name: Dict[tuple, Cell] = {}  # (cell name, seed) → its Cell: a student's teacher is listed before it
    for name, seed, cfg in grid_file.replicas:
        teacher = None
        if cfg.distill.teacher is not None:  # before any hash: the teacher's is part of the student's
            teacher = by_name[cfg.distill.teacher, seed]
            cfg.distill.teacher_hash = teacher.config_hash
            cfg.distill.masks = str(PseudoMaskFolder.in_root(output_root, teacher.config_hash, cfg.data.train,
                                                             cfg.distill.threshold).dir)
        training = None
        if trains_a_model(cfg):  # trainings live by training hash: cells differing only in post-processing share one
            training = Training.in_root(cfg, output_root)
            training = trainings.setdefault(training.hash, training)
            cfg.output_dir = str(training.dir)
        cells.append(Cell(name, cfg, config_hash(cfg), training, seed, teacher))
        by_name[name, seed] = cells[-1]
    return Grid(grid_file.name, grid_file.path, cells, grid_file.description, grid_file.table, grid_file.seeds)


def trains_a_model(cfg: Config) -> bool:
    """Whether a cell of ``cfg`` trains (or reuses) a model: not when it scores precomputed maps, nor
    when its method trains nothing."""
    return cfg.maps is None and registered_attributes(*METHOD_REGISTRY)[cfg.method]["trains"]


def group_key(cell: Cell) -> str:
    """The training group of a cell: its training hash (a cell scoring precomputed maps trains
    nothing and is a group of its own, by config hash). A distillation cell is in its teacher's group,
    so that one worker (one Slurm task) runs the teacher, then the student."""
    if cell.teacher is not None:
        return group_key(cell.teacher)
    return cell.training_hash if cell.trains else cell.config_hash


def ordered(cells: List[Cell]) -> List[Cell]:
    """Group cells by training; in each group the cell without post-processing trains first, and
    distillation cells come after their teachers."""
    groups: Dict[str, List[Cell]] = {}
    for c in cells:
        groups.setdefault(group_key(c), []).append(c)
    out = []
    for group in groups.values():
        out += sorted(group, key=lambda c: (c.teacher is not None, len(post_trick_names(c.cfg.tricks)) > 0,
                                            cells.index(c)))
    return out


def plan(grid: Grid, runs: Dict[str, list], force: bool, rerun_failed: bool,
         since_ms: Optional[int] = None) -> List[Step]:
    """The action of every cell, given its runs (by config hash) in the store. The first cell of each
    training group trains; the others evaluate its model, or wait while a live worker trains it.
    With ``force``, FINISHED runs started before ``since_ms`` (the invocation) do not count as done."""
    steps: List[Step] = []
    trainer_of: Dict[str, Cell] = {}  # training hash → the cell that trains it
    live_trainings = {r.data.tags.get(tags.TRAINING_HASH) for rs in runs.values() for r in rs if claims.is_live(r)}
    for cell in ordered(grid.cells):
        mine = runs.get(cell.config_hash, [])
        done = [r for r in mine if r.info.status == "FINISHED"
                and (not force or since_ms is not None and r.info.start_time >= since_ms)]
        stale = [r for r in mine if r.info.status == "RUNNING" and not claims.is_live(r)]
        live = [r for r in mine if claims.is_live(r)]
        failed = [r for r in mine if r.info.status in ("FAILED", "KILLED")]
        if cell.trains:
            trainer_of.setdefault(cell.training_hash, cell)
        shares = cell.trains and trainer_of[cell.training_hash] is not cell
        complete = cell.trains and cell.training.status().state is State.COMPLETE
        if done:
            steps.append(Step(cell, Action.SKIP, f"done (run {done[-1].info.run_id[:8]})",
                              abandoned=[r.info.run_id for r in stale]))
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
        elif cell.teacher is not None and any(claims.is_live(r) for r in runs.get(cell.teacher.config_hash, [])):
            steps.append(Step(cell, Action.WAIT, f"waits for its teacher {cell.teacher.name} (its pseudo-masks)"))
        elif not cell.trains and cell.cfg.maps is not None:
            steps.append(Step(cell, Action.EVALUATE_MAPS, f"score maps in {cell.cfg.maps}"))
        elif not cell.trains:
            steps.append(Step(cell, Action.EVALUATE_METHOD, f"run {cell.cfg.method} (trains nothing)"))
        elif complete:
            steps.append(Step(cell, Action.EVALUATE, "training already complete"))
        elif shares and cell.training_hash in live_trainings:
            steps.append(Step(cell, Action.WAIT, f"waits for the training of {trainer_of[cell.training_hash].name}"))
        elif shares:  # a shared training is of one seed: the trainer's name says which cell
            steps.append(Step(cell, Action.EVALUATE, f"model of {trainer_of[cell.training_hash].name}"))
        else:
            on = f" on the pseudo-masks of {cell.teacher.name}" if cell.teacher is not None else ""
            steps.append(Step(cell, Action.TRAIN, f"new training{on}"))
    return steps


def training_groups(steps: List[Step]) -> List[List[str]]:
    """Cell ids per training group that still has a cell to run."""
    return [[s.cell.id for s in group] for group in grouped(steps, lambda s: group_key(s.cell))
            if any(s.action is not Action.SKIP for s in group)]


def actions(steps: List[Step]) -> Dict[str, Action]:
    """Cell id → its action: what the estimate and the disk check price."""
    return {s.cell.id: s.action for s in steps}


T = TypeVar("T")


def grouped(items: Sequence[T], key: Callable[[T], str]) -> List[List[T]]:
    """``items`` grouped by ``key``, in the order the keys first appear: by cell name, a cell's replicas
    together (without seeds, every group is one item, in the given order); by ``group_key``, the
    training groups."""
    groups: Dict[str, List[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def counted(grid: Grid, runs: int) -> str:
    """``12 cells``, or with seeds ``36 runs (12 cells × 3 seeds)``: what the plan and the summary count."""
    if not grid.seeds:
        return f"{runs} cells"
    return f"{runs} runs ({len({c.name for c in grid.cells})} cells × {len(grid.seeds)} seeds)"


# --- the summary ------------------------------------------------------------------------------------

def summary_row(cell: Cell, status: str, **values) -> dict:
    """A row of the closing summary: the cell's name, seed (None without seeds) and status, then its
    run id, metrics or note."""
    return {"cell": cell.name, "seed": cell.seed, "status": status, **values}


def rows_from_store(runs: Dict[str, list], grid: Grid) -> List[dict]:
    """Summary rows from each cell's newest run (``runs`` by config hash: what Slurm tasks logged)."""
    rows = []
    for cell in grid.cells:
        mine = runs.get(cell.config_hash, [])
        if not mine:
            rows.append(summary_row(cell, "no run"))
            continue
        run = mine[-1]
        rows.append(summary_row(cell, run.info.status, run_id=run.info.run_id, **run.data.metrics))
    return rows


def print_summary(grid: Grid, rows: List[dict]) -> None:
    """One line per cell: its status, its headline metrics on every dataset, its run; with seeds, a
    line per seed under the cell's name."""
    keys = sorted({k for r in rows for k in r if k.split(".")[-1] in SUMMARY_METRICS and "." in k})
    seeds = ["seed"] if grid.seeds else []
    header = ["cell", *seeds, "status", *keys, "run"]
    lines = [header]
    for group in grouped(rows, lambda r: r["cell"]):
        lines += [["" if i else r["cell"], *([r["seed"]] if seeds else []), r["status"],
                   *[f"{r[k]:.3f}" if k in r else "" for k in keys],
                   (r.get("run_id") or "")[:8] + (f" {r['note']}" if r.get("note") else "")]
                  for i, r in enumerate(group)]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print(f"\nsummary of grid {grid.name}:")
    for line in lines:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths)))


def print_next_steps_of_grid(grid: Grid, uri: str, exp_id: str) -> None:
    """What a user does with a finished grid: the tables, and the runs in the MLflow UI (a direct link
    to the grid's runs table, ``runs_page``)."""
    print("Next:")
    print(f"  python -m analysis.make_tables --grid {grid.name}" + ("" if uri == tracking_uri() else
                                                                  f" --tracking-uri {uri}"))
    print(f"  {runs_page(uri, exp_id)}")
