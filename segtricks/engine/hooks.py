"""The training hook that logs to MLflow (``segtricks.tracking.store`` imports no trainer, hence no torch)."""
from __future__ import annotations

from typing import Dict

from segtricks.tracking.store import RunLog
from segtricks.engine.loop import Hook, LoopState


class EpochLogger(Hook):
    """Training hook: each finished epoch's metrics to the run, at step = epoch."""

    def __init__(self, run: RunLog) -> None:
        self.run = run

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        self.run.log_metrics(metrics, step=state.epoch)
