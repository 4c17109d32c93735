"""Run every cell of a grid as an MLflow run: ``python -m segtricks.ablate --grid table3``.

Cells whose config hash already has a FINISHED run are skipped; a run left RUNNING by a killed
worker is resumed (training continues from its last checkpoint); a cell that raises is marked FAILED
with its traceback as an artifact and the grid goes on. Cells that differ only in post-processing
share one training; ``--workers N`` starts N worker processes, ``--launcher slurm`` submits jobs.
Before any run is created, every weights file and dataset the cells to run need is looked up, and
all that is missing is listed at once (exit 2); ``--dry-run`` lists it as each cell's "will fail".
A ``--set`` on a key that a grid axis varies is refused (exit 2); ``--force-set`` applies it anyway.
``--seeds 0,1,2`` (or ``seeds:`` in the grid file) runs every cell once per training seed; the runs
keep the cell's name and carry the seed as a tag and a param.

This module is only the command line: it checks the arguments and the grid before importing torch,
timm and MLflow (seconds), so that a typo is reported at once; ``segtricks.launchers.launch`` runs it.
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from segtricks import errors
from segtricks.launchers import slurm
from segtricks.config.grid import parse_seeds, read_grid


def parse_args(argv: List[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=errors.prog("segtricks.ablate"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", required=True, help="grid name (experiments/<name>.yaml) or a YAML path")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell")
    ap.add_argument("--force-set", action="store_true",
                    help="apply --set flags even to keys that a grid axis varies (refused otherwise)")
    ap.add_argument("--seeds", metavar="S,S,...",
                    help="run every cell once per training seed, e.g. 0,1,2 (replaces the grid file's seeds:)")
    ap.add_argument("--dry-run", action="store_true", help="print the cells and what would happen")
    ap.add_argument("--estimate", action="store_true",
                    help="with --dry-run: measure a few training steps and evaluation batches of each distinct "
                         "workload here (random-init weights) and print each cell's time, peak memory and disk")
    ap.add_argument("--estimate-steps", type=int, default=2, metavar="N",
                    help="timed steps (and evaluation batches) per workload, after one warm-up (default 2)")
    ap.add_argument("--remeasure", action="store_true",
                    help="with --estimate: measure every workload again instead of using what earlier estimates "
                         "measured on this machine and device")
    ap.add_argument("--force", action="store_true", help="rerun cells that already have a FINISHED run")
    ap.add_argument("--rerun-failed", action="store_true", help="run only cells whose last run failed")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    ap.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--output-root", default="outputs", help="where trainings keep their checkpoints")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes (--launcher local)")
    ap.add_argument("--device", default="auto")
    slurm.add_arguments(ap)
    return ap.parse_args(argv)


@errors.command
def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise errors.BadInput(f"--workers must be ≥ 1 (got {args.workers})")
    if args.estimate and not args.dry_run:
        raise errors.BadInput("--estimate goes with --dry-run (an estimate runs nothing of the grid)")
    if args.remeasure and not args.estimate:
        raise errors.BadInput("--remeasure goes with --dry-run --estimate (it measures the grid's workloads again)")
    if args.estimate_steps < 1:
        raise errors.BadInput(f"--estimate-steps must be ≥ 1 (got {args.estimate_steps})")
    args.seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    grid_file = read_grid(args.grid, args.set, args.force_set, args.seeds)
    opts = slurm.options_from(args, args.output_root) if args.launcher == "slurm" else None
    for line in grid_file.overridden:
        print(f"warning: --force-set: {line}", file=sys.stderr)
    from segtricks.launchers import launch  # torch, timm, MLflow: only once the grid is known to be valid
    return launch.launch_grid(args, opts)


if __name__ == "__main__":
    sys.exit(main())
