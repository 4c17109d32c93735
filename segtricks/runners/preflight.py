"""The check before a grid or a study runs: every weights file and dataset its cells need, looked up
(as loading them would, without loading them), and everything missing listed at once.

Without it a grid on a fresh machine fails cell after cell, each with the first missing thing it
meets, and leaves a FAILED run per cell. ``ablate`` and ``tune`` run this check before creating any
run and refuse to start when something is missing (``errors.BadInput``: exit 2); ``ablate --dry-run``
shows it as "will fail". The output root is checked first, the same way (``check_output_root``), and
the free space for the evaluation caches last (``disk_warning``: a warning, since a cache can be
turned off).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from segtricks import errors
from segtricks.config.grid import Grid
from segtricks.config.schema import Config, DatasetRef
from segtricks.data.datasets import DatasetError, build_dataset
from segtricks.engine.training import State
from segtricks.estimate.cache_plan import disk_needed
from segtricks.estimate.report import human_bytes
from segtricks.files import check_writable_folder, free_bytes
from segtricks.models.weights import RELEASES, WeightsNotFoundError, find_weights
from segtricks.runners.plan import Action, Step, actions, plan
from segtricks.runtime.device import resolve_device
from segtricks.tracking.store import Store


def check_devices(flag: str, configs: Sequence[Config]) -> None:
    """The ``--device`` flag's device and every config's ``device:`` exist on this machine (a grid
    asked for CUDA on a machine without it created a FAILED run per cell): ``DeviceError``, exit 2."""
    resolve_device(flag)
    for name in sorted({cfg.device for cfg in configs}):
        resolve_device(name, "the config's device:")


@dataclass(frozen=True)
class Missing:
    what: str  # "weights of dino_vits8", "dataset duts_te (test)"
    message: str  # the loader's own error: the file, where it is published, where to put it


class Preflight:
    """Looks each weights file and dataset up once, however many cells need it. ``download=False`` (a
    dry run): official weights absent from this machine are not downloaded but listed in ``downloads``
    (what -> "<url> to <path>"), which the run would fetch."""

    def __init__(self, download: bool = True) -> None:
        self._seen: Dict[Tuple, List[Missing]] = {}
        self._download = download
        self.downloads: Dict[str, str] = {}

    def missing(self, cfg: Config, trains: bool) -> List[Missing]:
        """What a cell with config ``cfg`` needs and this machine lacks. ``trains``: the cell will
        train (its training datasets are needed; a cell whose training is complete needs only its
        backbone and evaluation datasets)."""
        if cfg.maps is not None:  # scores precomputed maps: no model at all
            return [m for ref in cfg.eval for m in self._maps(Path(cfg.maps) / ref.name)
                    + self._dataset(ref)]
        refs = list(cfg.eval)
        if trains:
            refs = [cfg.data.train, *([cfg.data.val] if cfg.data.val else []), *refs]
        return self._weights(cfg.backbone.name, cfg.backbone.weights) + [m for r in refs for m in self._dataset(r)]

    def _weights(self, name: str, weights) -> List[Missing]:
        key = ("weights", name, weights)
        if key not in self._seen:
            try:
                path = find_weights(name, weights, self._download)
                self._seen[key] = []
                if path is not None and not path.is_file():  # not downloaded: see __init__
                    self.downloads[f"weights of {name}"] = f"{RELEASES[name].url} to {path}"
            except WeightsNotFoundError as exc:
                self._seen[key] = [Missing(f"weights of {name}", str(exc))]
        return self._seen[key]

    def _dataset(self, ref: DatasetRef) -> List[Missing]:
        key = ("dataset", ref.name, ref.root, ref.split, ref.on_error)
        if key not in self._seen:
            try:
                build_dataset(ref)  # lists the folders: layout and file pairs, reads no image
                self._seen[key] = []
            except DatasetError as exc:
                self._seen[key] = [Missing(f"dataset {ref.name} ({ref.split})", str(exc))]
        return self._seen[key]

    def _maps(self, folder: Path) -> List[Missing]:
        key = ("maps", str(folder))
        if key not in self._seen:
            self._seen[key] = [] if folder.is_dir() else [
                Missing(f"maps {folder}", f"maps folder {folder} does not exist (one <image id>.png per image)")]
        return self._seen[key]


def report(missing_by_cell: Dict[str, Sequence[Missing]]) -> str:
    """Every missing thing once, with the cells that need it, as the lines of one error message (two
    things with one cause, such as both splits of an absent DUTS-TR, are one line)."""
    by_message: Dict[str, Tuple[List[str], List[str]]] = {}
    for cell, missing in missing_by_cell.items():
        for m in missing:
            whats, cells = by_message.setdefault(m.message, ([], []))
            if m.what not in whats:
                whats.append(m.what)
            if cell not in cells:
                cells.append(cell)
    lines = [f"{len(by_message)} thing(s) the cells need are missing; nothing was run:"]
    for message, (whats, cells) in by_message.items():
        who = cells[0] if len(cells) == 1 else f"{len(cells)} cells"
        lines.append(f"  - {', '.join(whats)} (needed by {who}): {message}")
    return "\n".join(lines)


def refuse_missing(missing_by_cell: Dict[str, Sequence[Missing]]) -> None:
    """Stop before any run exists when anything is missing: ``report``'s lines, as a ``BadInput``."""
    if any(missing_by_cell.values()):
        raise errors.BadInput(report(missing_by_cell))


def check_output_root(root: str) -> None:
    """Refuse (``errors.BadInput``, one line) an ``--output-root`` where trainings cannot keep their
    checkpoints. Checked before any store or run exists: otherwise every cell fails on it and leaves
    a FAILED run (``files.check_writable_folder``)."""
    check_writable_folder(root, "--output-root")


def disk_warning(cells: Sequence, actions: Dict[str, str], root: Path) -> Optional[str]:
    """One line when the evaluation caches the cells to run will write (``estimate.disk_needed``:
    exact row sizes) exceed the free space where the output root is; None when they fit."""
    needed, free = disk_needed(cells, actions), free_bytes(root)
    if needed <= free:
        return None
    return (f"warning: the grid's evaluation caches need about {human_bytes(needed)} and {human_bytes(free)} "
            f"is free at {root}; free space, choose another --output-root, or turn caching off "
            f"(--set cache.keys=false --set cache.masks=false: slower, the same numbers)")


def missing_by_cell(steps: List[Step], check: Preflight) -> Dict[str, List[Missing]]:
    """What each cell that will run needs and this machine lacks."""
    return {s.cell.id: check.missing(s.cell.cfg, trains=s.cell.trains and
                                     s.cell.training.status().state is not State.COMPLETE)
            for s in steps if s.action is not Action.SKIP}


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
    refuse_missing(missing_by_cell(steps, Preflight()))
    warn_disk(steps, Path(output_root))
    return Prepared(grid, uri, store, exp_id, steps, since_ms)


def warn_disk(steps: List[Step], root: Path) -> None:
    """Say before the grid starts when its evaluation caches will not fit (``preflight.disk_warning``)."""
    line = disk_warning([s.cell for s in steps], actions(steps), root)
    if line:
        print(line, file=sys.stderr)
