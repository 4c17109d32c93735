"""Read a grid's cell runs from MLflow into tidy DataFrames, and their per-image evidence for the
contrasts (nothing is recomputed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd

from analysis.contrasts import CURVE_METRICS
from segtricks.config.vocabulary import METRICS
from segtricks import errors
from segtricks.tracking.artifacts import read_curves, read_records
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


class RunEvidence:
    """The per-image evidence of a grid's FINISHED runs, as ``analysis.contrasts.Evidence``: for
    (cell, seed, dataset, metric), a Series of per-image scores (records) or a DataFrame of per-image F
    curves, indexed by image id; None when the run has none. Each artifact is read once per run.
    ``seeds_of(cell)``: the seeds of the cell's FINISHED runs (its ``seed`` param)."""

    def __init__(self, runs: pd.DataFrame, store: Store) -> None:
        self.store = store
        self.run_of: Dict[Tuple[str, str], str] = {}
        for _, run in runs[runs.status == "FINISHED"].iterrows():  # the first of a cell's runs at one seed
            self.run_of.setdefault((run.cell, str(run.seed)), run.run_id)
        self._records: Dict[Tuple[str, str], Optional[pd.DataFrame]] = {}
        self._curves: Dict[Tuple[str, str], Optional[pd.DataFrame]] = {}

    def seeds_of(self, cell: str) -> List[str]:
        return sorted(seed for c, seed in self.run_of if c == cell)

    def records(self, run_id: str, key: str) -> Optional[pd.DataFrame]:
        if (run_id, key) not in self._records:
            df = read_records(self.store, run_id, key)
            self._records[run_id, key] = None if df is None else df.set_index(df["image_id"].astype(str))
        return self._records[run_id, key]

    def curves(self, run_id: str, key: str) -> Optional[pd.DataFrame]:
        if (run_id, key) not in self._curves:
            self._curves[run_id, key] = read_curves(self.store, run_id, key)
        return self._curves[run_id, key]

    def __call__(self, cell: str, seed: str, dataset: str, metric: str) -> Optional[pd.DataFrame | pd.Series]:
        run_id = self.run_of.get((cell, seed))
        if run_id is None:
            return None
        if metric in CURVE_METRICS:
            return self.curves(run_id, dataset)
        records = self.records(run_id, dataset)
        column, scale = METRICS[metric].record, METRICS[metric].scale
        if records is None or column not in records:
            return None
        scores = records[column].dropna().astype(float) * scale  # images without a mask (or boxes) score none
        return scores if len(scores) else None
