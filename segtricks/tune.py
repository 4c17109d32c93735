"""Optuna studies over the tricks' hyperparameters: ``python -m segtricks.tune --study demo``.

    python -m segtricks.tune --study NAME [--n-trials N] [--storage URL] [--tracking-uri URI]
    python -m segtricks.tune --study NAME --best      # best parameters as a --set / grid override

Default storage ``sqlite:///optuna.db`` in the working directory; ``--storage postgresql://…``
lets workers on several machines share one study (Optuna's distributed mode: start the same command
on each); ``--storage journal:PATH`` is a journal file (for clusters without a database server; it
has no trial heartbeats). ``--launcher slurm --workers N`` runs N such workers as Slurm array tasks.
``n_trials`` is the study's total: rerunning continues it up to that count. Trials of a killed
worker stop heart-beating and are failed and retried once. Each trial reports its validation
metric every epoch, so unpromising trials are pruned. Trainings are shared by training hash with the
ablation runner, so a trial that changes only post-processing parameters (GF radius, eps) reuses an
equal training instead of training again. MLflow: one parent run per study, one nested run per trial.
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from segtricks import errors
from segtricks.launchers import slurm
from segtricks.config.study import load_study


def parse_args(argv: List[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=errors.prog("segtricks.tune"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", required=True, help="study name (experiments/study_<name>.yaml) or a YAML path")
    ap.add_argument("--n-trials", type=int, help="total trials of the study (default: its n_trials)")
    ap.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna.db in this folder)")
    ap.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every trial")
    ap.add_argument("--study-name", help="the study's name in the storage (default: the file's name:); a new name "
                                         "starts a new study, e.g. to run the same file with other --set flags")
    ap.add_argument("--best", action="store_true", help="print the best parameters as an override and exit")
    ap.add_argument("--output-root", default="outputs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=1, help="Slurm array tasks sharing the study (--launcher slurm)")
    ap.add_argument("--estimate", action="store_true",
                    help="measure a few training steps and evaluation batches of the base config here "
                         "(random-init weights) and print a trial's and the study's time, memory and disk; runs nothing")
    ap.add_argument("--estimate-steps", type=int, default=2, metavar="N",
                    help="timed steps per workload for --estimate, after one warm-up (default 2)")
    ap.add_argument("--remeasure", action="store_true",
                    help="with --estimate: measure again instead of using what earlier estimates measured here")
    slurm.add_arguments(ap)
    return ap.parse_args(argv)


@errors.command
def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise errors.BadInput(f"--workers {args.workers}: the number of Slurm array tasks must be at least 1")
    if args.workers > 1 and args.launcher != "slurm":
        raise errors.BadInput(f"--workers {args.workers} runs Slurm array tasks and needs --launcher slurm; on one "
                              f"machine, start the same command in another shell: the workers share the study")
    if args.n_trials is not None and args.n_trials < 1:
        raise errors.BadInput(f"--n-trials {args.n_trials}: a study's total must be at least 1")
    spec = load_study(args.study, args.set, args.study_name)
    from segtricks.launchers import launch  # torch, timm, MLflow: only once the study is known to be valid
    return launch.launch_study(spec, args)


if __name__ == "__main__":
    sys.exit(main())
