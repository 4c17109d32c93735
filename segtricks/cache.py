"""What evaluation keeps on disk, listed and removed: ``python -m segtricks.cache ls|rm``.

    python -m segtricks.cache ls [--output-root outputs] [--tracking-uri URI]
    python -m segtricks.cache rm [--grid G] [--training HASH_PREFIX] [--backbone NAME]
                                 [--older-than 7d|12h|30m] [--kind masks|keys] [--all] [--dry-run]

An output root holds two caches (``segtricks.evaluation.prediction_cache``): backbone keys in ``<root>/keys/``,
shared by every training on one backbone (ViT-S/8: 1.2 MB per evaluation image), and raw masks in
``<root>/trainings/<training hash>/predictions/``, one training's (0.2 MB per image at 320 px).

``ls`` prints one row per cache: kind, backbone, dataset, prediction size, protocol, rows, size,
age, the training (masks) and the grids that use it. Grids come from the MLflow store's run tags
(``grid`` and ``training_hash``; a study's trials show as ``study:<name>``): a masks cache belongs
to its training's grids, a keys cache to the grids of every training under the root on its backbone.
Without a store the grids are '?'; no store is ever created, and MLflow is imported only when one
exists (torch never), so that ``ls`` answers at once.

``rm`` removes the caches that match every selector given (``--all``: every cache), ``.npy`` and
``.json`` together, and the partial files of evaluations that were killed while writing one. A
partial file whose writer is alive is kept, as is one written on another host (its process cannot
be checked from here). Checkpoints and runs are never touched: the next evaluation that needs a
removed cache recomputes it, with the same numbers.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import yaml

from segtricks import errors
from segtricks.files import TempName, parse_temp_name, writer_alive
from segtricks.tracking.tags import GRID, STUDY, TRAINING_HASH
from segtricks.tracking.uri import sqlite_path, tracking_uri

KINDS = ("masks", "keys")
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
SUFFIXES = (".npy", ".json")  # a cache's two files


@dataclass
class Cache:
    """One cache (``.npy`` and ``.json``), or one partial file of a cache being written (``writer``)."""

    kind: str
    files: List[Path]  # what rm removes, the .json first (a reader takes a cache whose .json it found)
    nbytes: int
    created: float  # unix seconds: the .json's "created", else the file's mtime
    backbone: str = "?"
    weights: Optional[str] = None
    dataset: str = "?"
    size: Optional[int] = None
    protocol: str = "?"
    rows: Optional[int] = None
    training: Optional[str] = None  # a masks cache's training folder name (the hash's first 16 digits)
    writer: Optional[TempName] = None  # what a partial file's name says of its writer
    grids: Optional[Set[str]] = None  # None: no store to tell

    @property
    def partial(self) -> bool:
        return self.writer is not None

    def writer_alive(self) -> Optional[bool]:
        """Whether a partial file's writer runs; None when it ran on another host (not checkable)."""
        return writer_alive(self.writer)


def from_name(kind: str, base: str) -> Dict[str, object]:
    """What a cache's file name says (``prediction_cache``: ``[<backbone>-|k16-]<dataset>-<split>-
    <limit>-<size>-<protocol>-<hash>``), for caches whose ``.json`` predates their description."""
    parts = base.split("-")[:-1]  # the hash dropped
    if len(parts) < (6 if kind == "keys" or parts[:1] == ["k16"] else 5) or not parts[-2].isdigit():
        return {}
    head, (split, limit, size, protocol) = parts[:-4], parts[-4:]
    info: Dict[str, object] = {"size": int(size), "protocol": protocol}
    if kind == "keys":  # backbone and dataset names have no '-' (the registered ones)
        info["backbone"], head = head[0], head[1:]
    elif head[0] == "k16":
        head = head[1:]
    info["dataset"] = {"name": "-".join(head), "split": split, "limit": None if limit == "all" else limit}
    return info


class Trainings:
    """The training folders of an output root, and (read once, when asked) the backbone of each."""

    def __init__(self, root: Path) -> None:
        folder = root / "trainings"
        self.dirs = {d.name: d for d in sorted(folder.iterdir()) if d.is_dir()} if folder.is_dir() else {}
        self._backbones: Dict[str, Tuple[Optional[str], Optional[str]]] = {}

    def backbone(self, name: str) -> Tuple[Optional[str], Optional[str]]:
        """(backbone name, weights id) of training ``name``, from its config.yaml and status.json."""
        if name not in self._backbones:
            folder = self.dirs[name]
            self._backbones[name] = (_read(folder / "config.yaml", lambda t: yaml.safe_load(t)["backbone"]["name"]),
                                     _read(folder / "status.json", lambda t: json.loads(t)["weights_id"]))
        return self._backbones[name]


def _read(path: Path, parse):
    """``parse(text of path)``, or None when the file is missing (removed meanwhile) or not as expected."""
    try:
        return parse(path.read_text())
    except (OSError, EOFError, ValueError, yaml.YAMLError, KeyError, TypeError):
        return None


def _rows(array: Path) -> Optional[int]:
    """The row count in a ``.npy``'s header (a memory map reads no rows)."""
    try:
        return np.load(array, mmap_mode="r").shape[0]
    except (OSError, EOFError, ValueError):  # removed meanwhile, or not a complete .npy
        return None


def scan(root: Path) -> List[Cache]:
    """Every cache and partial file under output root ``root``."""
    trainings = Trainings(root)
    caches = _scan_folder(root / "keys", "keys", None)
    for name, folder in trainings.dirs.items():
        caches += _scan_folder(folder / "predictions", "masks", name)
    for c in caches:
        if c.kind == "masks" and c.backbone == "?":  # a .json without its description: the training's
            backbone, weights = trainings.backbone(c.training)
            c.backbone, c.weights = backbone or "?", c.weights or weights
    return caches


def _scan_folder(folder: Path, kind: str, training: Optional[str]) -> List[Cache]:
    if not folder.is_dir():
        return []
    bases: Dict[str, List[Path]] = {}
    caches = []
    for path in sorted(folder.iterdir()):
        temp = parse_temp_name(path.name, SUFFIXES)
        if temp:
            cache = _describe(kind, Path(temp.target).stem, {}, [path], training, path)
            if cache is not None:
                cache.writer = temp
                caches.append(cache)
        elif path.suffix in (".npy", ".json") and not path.name.startswith("."):
            bases.setdefault(path.stem, []).append(path)
    for base, files in bases.items():
        meta = folder / f"{base}.json"
        about = _read(meta, json.loads) if meta in files else None
        cache = _describe(kind, base, about if isinstance(about, dict) else {},
                          sorted(files, key=lambda p: p.suffix != ".json"), training, folder / f"{base}.npy")
        caches += [cache] if cache is not None else []
    return caches


def _describe(kind: str, base: str, about: Dict, files: List[Path], training: Optional[str],
              array: Path) -> Optional[Cache]:
    """The cache of ``files`` (None when they were removed meanwhile: a writer replacing a stale cache)."""
    stats = {}
    for path in files:
        try:
            stats[path] = path.stat()
        except FileNotFoundError:
            pass
    if not stats:
        return None
    info = {**from_name(kind, base), **about}
    rows = info.get("rows")
    if rows is None and array.suffix == ".npy" and array in stats:
        rows = _rows(array)
    created = info.get("created") or stats.get(array, next(iter(stats.values()))).st_mtime
    data = info.get("dataset") or {}
    dataset = f"{data['name']}/{data['split']}/{data['limit'] or 'all'}" if data else "?"
    return Cache(kind=kind, files=list(stats), nbytes=sum(s.st_size for s in stats.values()), created=float(created),
                 backbone=info.get("backbone", "?"), weights=info.get("weights"), dataset=dataset,
                 size=info.get("size"), protocol=info.get("protocol", "?"), rows=rows, training=training)


# --- which grids use a cache ---------------------------------------------------------------------------

class StoreUnreadable(errors.Unavailable):
    """The MLflow store exists but could not be read; the message says which and why."""


def store_exists(uri: str) -> bool:
    """A server is taken to exist; a SQLite store exists when its file does (an empty file is what a
    killed creator left: opening it would build a store, so it does not count)."""
    path = sqlite_path(uri)
    return path is None or path.is_file() and path.stat().st_size > 0


def grid_labels(uri: str) -> Dict[str, Set[str]]:
    """Training hash (first 16 digits) → the grids whose runs used it, and ``study:<name>`` for a
    study's trials: from the run tags ``training_hash``, ``grid`` and ``study``."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # as segtricks.tracking.connect
    from mlflow.tracking import MlflowClient  # only here: seconds to import, and only for a store that exists
    labels: Dict[str, Set[str]] = {}
    try:
        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in _pages(client.search_experiments)]
        search = functools.partial(client.search_runs, experiments, f"tags.{TRAINING_HASH} != ''")
        for run in _pages(search) if experiments else []:
            tags = run.data.tags
            label = tags.get(GRID) or (f"study:{tags[STUDY]}" if tags.get(STUDY) else None)
            if label:
                labels.setdefault(tags[TRAINING_HASH][:16], set()).add(label)
    except Exception as exc:  # locked, damaged, out-of-date schema, unreachable server: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnreadable(f"MLflow store {sqlite_path(uri) or uri} could not be read ({reason})") from None
    return labels


def _pages(search) -> list:
    """Every result of a paged MLflow search."""
    out, token = [], None
    while True:
        page = search(page_token=token)
        out += page
        token = page.token
        if not token:
            return out


def attach_grids(caches: List[Cache], labels: Dict[str, Set[str]], root: Path) -> None:
    """Set each cache's grids: a masks cache's are its training's; a keys cache's, those of every
    training under ``root`` on the same backbone (and weights, where both are known)."""
    trainings = Trainings(root)
    for c in caches:
        if c.kind == "masks":
            c.grids = set(labels.get(c.training, ()))
            continue
        c.grids = set()
        for name in trainings.dirs:
            backbone, weights = trainings.backbone(name)
            if backbone == c.backbone and (weights is None or c.weights is None or weights == c.weights):
                c.grids |= labels.get(name, set())


# --- the command line ---------------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line (``error: ...``, exit 2), not argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help)\n")


def duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([dhms])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: give a number and a unit, e.g. 7d, 12h or 30m")
    return float(match[1]) * UNITS[match[2]]


def training_prefix(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a training hash (hexadecimal digits, e.g. from cache ls)")
    return text.lower()[:16]  # a full hash (a run's training_hash tag) names its 16-digit folder


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = OneLineParser(prog=errors.prog("segtricks.cache"), description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = ap.add_subparsers(dest="command", required=True, metavar="ls|rm")
    for name, what in (("ls", "list the caches"), ("rm", "remove caches")):
        sub = commands.add_parser(name, help=what, description=what)
        sub.add_argument("--output-root", default="outputs", help="where trainings and caches are (default outputs)")
        sub.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    rm = commands.choices["rm"]
    rm.add_argument("--grid", help="caches the grid uses, also those other grids share (ls shows which); "
                                   "needs the MLflow store")
    rm.add_argument("--training", type=training_prefix, metavar="HASH_PREFIX",
                    help="masks of the trainings whose hash starts so")
    rm.add_argument("--backbone", help="caches of this backbone")
    rm.add_argument("--older-than", type=duration, metavar="AGE", help="caches made more than AGE ago (7d, 12h, 30m)")
    rm.add_argument("--kind", choices=KINDS)
    rm.add_argument("--all", action="store_true", help="every cache (alone: no other selector)")
    rm.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    return ap.parse_args(argv)


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f}"


def age(seconds: float) -> str:
    for unit, span in UNITS.items():
        if seconds >= span or unit == "s":
            return f"{max(0, int(seconds // span))}{unit}"


def rows_of(caches: List[Cache], now: float) -> List[List[str]]:
    order = sorted(caches, key=lambda c: (c.kind, c.backbone, c.dataset, c.training or "", c.protocol))
    return [[c.kind, c.backbone, c.dataset, str(c.size or "?"), c.protocol, str(c.rows if c.rows is not None else "?"),
             megabytes(c.nbytes), age(now - c.created), c.training or "-",
             "?" if c.grids is None else ", ".join(sorted(c.grids)) or "-"] for c in order]


def table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {"px", "rows", "MB"}
    return "\n".join("  ".join(v.rjust(w) if h in right else v.ljust(w) for h, v, w in zip(header, r, widths)).rstrip()
                     for r in [header, *rows])


def describe_partial(c: Cache) -> str:
    host, pid = c.writer.host, c.writer.pid
    alive = c.writer_alive()
    state = (f"its writer (pid {pid}) is running" if alive
             else "left by a killed evaluation (rm removes it)" if alive is False
             else f"written on host {host} (pid {pid}), which cannot be checked from here")
    return f"partial  {c.files[0]}  {megabytes(c.nbytes)} MB  {age(time.time() - c.created)}  {state}"


def ls(root: Path, caches: List[Cache], why_no_grids: Optional[str]) -> int:
    complete = [c for c in caches if not c.partial]
    partials = [c for c in caches if c.partial]
    if not caches:
        print(f"no caches under {root}")
        return 0
    if complete:
        print(table(["kind", "backbone", "dataset", "px", "protocol", "rows", "MB", "age", "training", "grids"],
                    rows_of(complete, time.time())))
    for c in partials:
        print(describe_partial(c))
    total = sum(c.nbytes for c in caches)
    print(f"total: {len(complete)} caches" + (f" and {len(partials)} partial files" if partials else "")
          + f" under {root}, {megabytes(total)} MB ({total} bytes)")
    if why_no_grids:
        print(f"grids: ? ({why_no_grids})")
    return 0


def remove(args: argparse.Namespace, root: Path, caches: List[Cache]) -> int:
    now = time.time()
    chosen = [c for c in caches
              if (args.kind is None or c.kind == args.kind)
              and (args.backbone is None or c.backbone == args.backbone)
              and (args.training is None or (c.training or "").startswith(args.training))
              and (args.older_than is None or now - c.created > args.older_than)
              and (args.grid is None or args.grid in (c.grids or ()))]
    if not chosen:
        print(f"nothing to remove: no cache under {root} matches")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    freed, removed, kept = 0, 0, 0
    for c in sorted(chosen, key=lambda c: (c.kind, c.backbone, c.dataset, c.training or "")):
        if c.partial and c.writer_alive() is not False:
            print(f"kept {describe_partial(c)}")
            kept += 1
            continue
        if not args.dry_run:
            for path in c.files:
                path.unlink(missing_ok=True)
        what = "partial file" if c.partial else f"{c.kind} {c.backbone} {c.dataset} {c.size or '?'}px {c.protocol}"
        print(f"{verb} {what}{' of training ' + c.training if c.training else ''}: "
              f"{', '.join(str(p) for p in c.files)} ({megabytes(c.nbytes)} MB)")
        freed += c.nbytes
        removed += 1
    print(f"{verb} {removed} of {len(chosen)} matching, {'would free' if args.dry_run else 'freed'} "
          f"{megabytes(freed)} MB ({freed} bytes)" + (f"; {kept} partial files kept" if kept else "")
          + "; checkpoints and runs are untouched, the next evaluation that needs a cache recomputes it")
    return 0


def store_labels(explicit_uri: Optional[str]) -> Tuple[Optional[Dict[str, Set[str]]], Optional[str]]:
    """``grid_labels`` of the store, or None and why there are none."""
    uri = tracking_uri(explicit_uri)
    if not store_exists(uri):
        return None, f"no MLflow store {sqlite_path(uri)}; --tracking-uri names another"
    try:
        return grid_labels(uri), None
    except StoreUnreadable as exc:
        return None, str(exc)


def usage_problem(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with rm's selectors as given, before anything is read."""
    selectors = [f"--{k.replace('_', '-')}" for k in ("grid", "training", "backbone", "older_than", "kind")
                 if getattr(args, k) is not None]
    if not selectors and not args.all:
        return ("rm needs a selector: --grid, --training, --backbone, --older-than or --kind, or --all for "
                "every cache (--dry-run shows what would go)")
    if selectors and args.all:
        return f"--all removes every cache; drop it to remove only what {', '.join(selectors)} selects"
    return None


def unknown_selector(args: argparse.Namespace, root: Path, caches: List[Cache],
                     labels: Optional[Dict[str, Set[str]]], why_no_grids: Optional[str]) -> Optional[str]:
    """A selector that names nothing known (a typo must not read as "nothing to remove")."""
    if args.grid is not None:
        if labels is None:
            return f"--grid needs the MLflow store that ran the grid: {why_no_grids}"
        known = set().union(*labels.values())
        if args.grid not in known:
            return (f"--grid {args.grid}: no run in the MLflow store is tagged grid={args.grid} "
                    f"(grids there: {', '.join(sorted(known)) or 'none'})")
    trainings = Trainings(root)
    if args.training is not None and not any(name.startswith(args.training) for name in trainings.dirs):
        return (f"--training {args.training}: no training under {root / 'trainings'} starts so "
                f"(python -m segtricks.cache ls shows the trainings with caches)")
    if args.backbone is not None:
        known = ({c.backbone for c in caches} | {trainings.backbone(n)[0] for n in trainings.dirs}) - {None, "?"}
        if args.backbone not in known:
            return (f"--backbone {args.backbone}: no cache or training under {root} uses it "
                    f"(backbones there: {', '.join(sorted(known)) or 'none'})")
    return None


@errors.command
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = Path(args.output_root)
    problem = usage_problem(args) if args.command == "rm" else None
    if problem:
        raise errors.BadInput(problem)
    if not root.is_dir():
        print(f"no caches: output root {root} does not exist (--output-root names another)")
        return 0
    caches = scan(root)
    labels, why_no_grids = None, None
    if args.command == "ls" or args.grid is not None:  # rm reads the store only for --grid
        labels, why_no_grids = store_labels(args.tracking_uri)
        if labels is not None:
            attach_grids(caches, labels, root)
    if args.command == "ls":
        return ls(root, caches, why_no_grids)
    problem = unknown_selector(args, root, caches, labels, why_no_grids)
    if problem:
        raise errors.BadInput(problem)
    return remove(args, root, caches)


if __name__ == "__main__":
    sys.exit(main())
