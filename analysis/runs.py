"""Read a grid's cell runs from MLflow into tidy DataFrames (nothing is recomputed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from segtricks import errors
from segtricks.tracking.artifacts import read_records
from segtricks.tracking.claims import is_live
from segtricks.tracking.store import Store
from segtricks.tracking.tags import BACKBONE, CELL, EVAL_PROTOCOL, SUPERSEDED_BY, WEIGHTS
from segtricks.tracking.uri import sqlite_path, tracking_uri


class NoStoreError(errors.BadInput, LookupError):
    """The chosen SQLite store does not exist (opening it would create an empty one)."""


class NoRunsError(errors.BadInput, LookupError):
    """The grid has no cell runs in the chosen store: its experiment does not exist
    (``experiment_exists`` False), or holds none (left by an older dry run, or its runs were deleted)."""

    def __init__(self, message: str, experiment_exists: bool) -> None:
        super().__init__(message)
        self.experiment_exists = experiment_exists


def open_store(uri: Optional[str] = None) -> Store:
    """The store to read; reading creates nothing, so an absent SQLite file raises ``NoStoreError``."""
    uri = tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        cwd = Path.cwd().resolve()
        shown = f"./{path.relative_to(cwd)}" if path.is_relative_to(cwd) else str(path)
        raise NoStoreError(f"no MLflow store at {shown}; run a grid first (python -m segtricks.ablate --grid demo) "
                           f"or pass --tracking-uri")
    return Store(uri)


def load_runs(grid: str, uri: Optional[str] = None, experiment: Optional[str] = None) -> pd.DataFrame:
    """One row per cell run: cell, status (FINISHED/FAILED/RUNNING/KILLED; a RUNNING run whose
    worker died reads 'stale'), run_id, backbone, weights, eval_protocol, seed, and one column per
    metric (``<dataset>.<metric>``; ``<dataset>.reference.<metric>`` under the reference protocol)."""
    store = open_store(uri)
    name = experiment or grid
    exp_id = store.experiment(name, create=False)
    if exp_id is None:
        raise NoRunsError(f"no experiment {name!r} in {store.uri}; run `python -m segtricks.ablate --grid {grid}` "
                          f"first, or pass --experiment/--tracking-uri", experiment_exists=False)
    rows = []
    for run in store.runs(exp_id):
        tags = run.data.tags
        if CELL not in tags or SUPERSEDED_BY in tags:  # the analysis run, foreign runs, replaced results
            continue
        status = run.info.status
        if status == "RUNNING" and not is_live(run):
            status = "stale"
        rows.append({"cell": tags[CELL], "status": status, "run_id": run.info.run_id,
                     "backbone": tags.get(BACKBONE, ""), "weights": tags.get(WEIGHTS, "unknown"),
                     "eval_protocol": tags.get(EVAL_PROTOCOL, "ours"),
                     "seed": run.data.params.get("seed", ""), **run.data.metrics})
    if not rows:  # an empty table has no columns to read
        raise NoRunsError(f"no runs for grid {grid} in experiment {name!r} of {store.uri}; run "
                          f"`python -m segtricks.ablate --grid {grid}`", experiment_exists=True)
    return pd.DataFrame(rows)


def load_records(grid: str, dataset: str, runs: pd.DataFrame, uri: Optional[str] = None) -> pd.DataFrame:
    """Per-image records of every FINISHED run for one dataset, with ``cell`` and ``run_id`` columns."""
    store = Store(uri)
    frames = []
    for _, run in runs[runs.status == "FINISHED"].iterrows():
        df = read_records(store, run.run_id, dataset)
        if df is None:  # this cell was not evaluated on that dataset
            continue
        df["cell"] = run.cell
        df["run_id"] = run.run_id
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
