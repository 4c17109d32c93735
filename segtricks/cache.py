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
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from segtricks import errors
from segtricks.engine.folder import TRAININGS, TrainingFolder
from segtricks.evaluation.cache_files import KINDS, Cache, scan
from segtricks.tracking.uri import sqlite_path, tracking_uri

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def store_exists(uri: str) -> bool:
    """A server is taken to exist; a SQLite store exists when its file does (an empty file is what a
    killed creator left: opening it would build a store, so it does not count)."""
    path = sqlite_path(uri)
    return path is None or path.is_file() and path.stat().st_size > 0


def attach_grids(caches: List[Cache], labels: Dict[str, Set[str]], root: Path) -> None:
    """Set each cache's grids: a masks cache's are its training's; a keys cache's, those of every
    training under ``root`` on the same backbone (and weights, where both are known)."""
    backbones = {name: folder.backbone() for name, folder in TrainingFolder.all_in_root(root).items()}
    for c in caches:
        if c.kind == "masks":
            c.grids = set(labels.get(c.training, ()))
            continue
        c.grids = set()
        for name, (backbone, weights) in backbones.items():
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
    """``Store.training_labels`` of the store, or None and why there are none. MLflow is imported only
    for a store that exists (seconds to import)."""
    uri = tracking_uri(explicit_uri)
    if not store_exists(uri):
        return None, f"no MLflow store {sqlite_path(uri)}; --tracking-uri names another"
    from segtricks.tracking.store import Store

    try:
        return Store(uri).training_labels(), None
    except Exception as exc:  # locked, damaged, out-of-date schema, unreachable server: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"MLflow store {sqlite_path(uri) or uri} could not be read ({reason})"


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
    trainings = TrainingFolder.all_in_root(root)
    if args.training is not None and not any(name.startswith(args.training) for name in trainings):
        return (f"--training {args.training}: no training under {root / TRAININGS} starts so "
                f"(python -m segtricks.cache ls shows the trainings with caches)")
    if args.backbone is not None:
        known = ({c.backbone for c in caches} | {t.backbone()[0] for t in trainings.values()}) - {None, "?"}
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
