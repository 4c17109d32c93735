"""MLflow bookkeeping for ablation cells: store set-up, run lookup by config hash, claims, logging.

Default store: ``sqlite:///mlflow.db`` in the working directory, artifacts under ``./mlruns``
(``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows them). ``--tracking-uri`` or
``$MLFLOW_TRACKING_URI`` selects a tracking server instead.

Claims: a worker owns a cell's run while its ``heartbeat`` tag (unix seconds, refreshed by a
background thread) is fresh; a RUNNING run whose heartbeat is older than ``STALE_AFTER_S`` belongs
to a dead worker and is resumed by whoever finds it. Two workers that create a run for the same cell
at once both see both runs; the older run (start time, then run id) wins and the other is deleted.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

DEFAULT_URI = "sqlite:///mlflow.db"
# A claim is refreshed every HEARTBEAT_S and expires STALE_AFTER_S after the last refresh.
HEARTBEAT_S = float(os.environ.get("SEGTRICKS_HEARTBEAT_S", 15))
STALE_AFTER_S = float(os.environ.get("SEGTRICKS_STALE_AFTER_S", 90))
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def tracking_uri(explicit: Optional[str] = None) -> str:
    """The store to use; the default SQLite file is made absolute (MLflow caches stores by URI, and
    workers must all reach the same file)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def experiment_id(client: MlflowClient, name: str, description: str = "") -> str:
    """The experiment named after the grid, created with artifacts under ./mlruns if new.

    Tagged as a model-training experiment, so that ``mlflow ui`` opens on its runs table (MLflow 3
    otherwise shows its GenAI overview), with the grid's description as the experiment note.
    """
    tags = {"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": description}
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (Path.cwd() / "mlruns").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except mlflow.exceptions.MlflowException:  # created by a concurrent worker just now
        return client.get_experiment_by_name(name).experiment_id


def runs_by_hash(client: MlflowClient, exp_id: str) -> Dict[str, list]:
    """Every run of the experiment grouped by its ``config_hash`` tag, oldest first."""
    runs = client.search_runs([exp_id], max_results=50_000, order_by=["attributes.start_time ASC"])
    out: Dict[str, list] = {}
    for run in runs:
        h = run.data.tags.get("config_hash")
        if h:
            out.setdefault(h, []).append(run)
    return out


def is_live(run) -> bool:
    """RUNNING with a fresh heartbeat: a worker is on it right now."""
    beat = float(run.data.tags.get("heartbeat", 0))
    return run.info.status == "RUNNING" and time.time() - beat < STALE_AFTER_S


def flatten(d: Dict, prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def log_params(client: MlflowClient, run_id: str, params: Dict[str, str]) -> None:
    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    items = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


def environment() -> Dict[str, str]:
    """Package versions, Python, platform and the git commit of the working tree."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "worker": WORKER}
    for pkg in ("segtricks", "torch", "torchvision", "timm", "mlflow", "optuna", "numpy", "pandas"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    try:
        root = Path(__file__).resolve().parents[1]
        env["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        env["git_dirty"] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = "unknown"
    return env


class Heartbeat:
    """Refreshes a run's ``heartbeat`` tag in the background while a worker holds the cell."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.client.set_tag(self.run_id, "heartbeat", str(time.time()))
            except Exception:  # a missed beat only risks a takeover after STALE_AFTER_S
                pass

    def __enter__(self) -> "Heartbeat":
        self.client.set_tag(self.run_id, "heartbeat", str(time.time()))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def create_claimed_run(client: MlflowClient, exp_id: str, name: str, tags: Dict[str, str]) -> Optional[str]:
    """Create a RUNNING run for a cell, or None when another worker's run for it won the race."""
    tags = {**tags, "heartbeat": str(time.time()), "worker": WORKER}
    run = client.create_run(exp_id, tags=tags, run_name=name)
    rival = [r for r in client.search_runs([exp_id], f"tags.config_hash = '{tags['config_hash']}'",
                                           order_by=["attributes.start_time ASC"])
             if r.info.status in ("RUNNING", "FINISHED")]
    rival.sort(key=lambda r: (r.info.start_time, r.info.run_id))
    if rival and rival[0].info.run_id != run.info.run_id:
        client.delete_run(run.info.run_id)
        return None
    return run.info.run_id


def finish(client: MlflowClient, run_id: str, ok: bool) -> None:
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def set_tags(client: MlflowClient, run_id: str, tags: Dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finished_runs(runs: List) -> List:
    return [r for r in runs if r.info.status == "FINISHED"]
