"""MLflow's system metrics on a training run: CPU %, memory, disk and network, and GPU utilisation and
memory when there is an NVIDIA GPU, every ``SAMPLING_S`` seconds while the training runs, under
``system/…`` (the run page's System metrics tab).

MLflow's monitor, attached to the run by id (our runs are not MLflow's active run). It needs ``psutil``
(its CPU and memory monitor imports it), and ``nvidia-ml-py`` for the GPU (without it, or without a GPU,
the GPU charts are left out). ``tracking: {system_metrics: false}`` (``--set tracking.system_metrics=false``)
turns it off; ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides the interval.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from segtricks.tracking.store import RunLog

SAMPLING_S = 2.0  # the demo's trainings last about 20 s: MLflow's 10 s would draw two points


@contextmanager
def system_metrics(run: RunLog, on: bool = True) -> Iterator[None]:
    """Sample the machine into ``run`` while the block runs (nothing when ``on`` is false); the last
    samples are written when it ends. A resumed training continues the run's steps."""
    if not on:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # its start and stop lines are INFO: one pair per training is noise beside the progress bars
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run.id, sampling_interval=SAMPLING_S, resume_logging=True,
                                   tracking_uri=run.client.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
