"""The one MLflow interface of the project: a ``Store`` of experiments and runs, and ``RunLog``, one run.

``ablate``, ``tune`` and ``analysis`` call only this module (and ``segtricks.engine.hooks``, its
training hook); it imports no torch, so reading results does not load the model stack. Default
store: ``sqlite:///mlflow.db`` in the working directory, artifacts under ``./mlruns`` (``mlflow ui
--backend-store-uri sqlite:///mlflow.db`` shows them). ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI`` selects a server.

Metric names, one scheme everywhere: ``train.<term>`` and ``val.iou`` per epoch (step = epoch),
``<dataset>.<metric>`` for evaluations under our protocol and ``<dataset>.reference.<metric>`` under
the reference's, ``objective.<metric>`` for a study trial. Names with ``/`` are logged with ``.``.

Creating a SQLite store is serialised by a file lock (``<db>.lock``), and the new store is built
in a temporary file and renamed into place (an existing file is therefore always complete): a kill during MLflow's schema creation leaves no
half-created ``mlflow.db``, and workers started at once on a fresh folder do not race the migration.
Store failures (locked, read-only, not a database, half-migrated, not a file) become one ``StoreError``
line, and so do a URI of a scheme MLflow does not know (``TrackingUriError``) and an http(s) URI at
which nothing answers (probed with a short timeout first: MLflow would retry it for minutes).

Claims: a worker owns a cell's run while its ``heartbeat`` tag (unix seconds, refreshed by a
background thread) is fresh; a RUNNING run whose heartbeat is older than ``STALE_AFTER_S`` belongs
to a dead worker and is resumed by whoever finds it. Two workers that create a run for the same cell
at once: the earlier claim (``claimed_at``, then run id) wins, and the other run is marked KILLED and
deleted (``Store.claim`` says why its claim time is taken only once the run is in the store).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

from segtricks.engine.checkpoint import NoSpaceError
from segtricks.spec.config import Config, resolved_yaml, to_dict
from segtricks.runners.slurm import slurm_job

# MLflow's SQL layer logs each database error with a traceback before raising it, and a note on store
# creation; the raised error becomes one line here (explain_store_error), so those logs are noise.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# Reading a run's small artifacts (records, samples) drew one "Downloading artifacts" bar per file, in
# make_tables dozens: noise a user cannot act on. Set the variable to true to see them again.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# A claim is refreshed every HEARTBEAT_S and expires STALE_AFTER_S after the last refresh.
HEARTBEAT_S = float(os.environ.get("SEGTRICKS_HEARTBEAT_S", 15))
STALE_AFTER_S = float(os.environ.get("SEGTRICKS_STALE_AFTER_S", 90))
WORKER = f"{socket.gethostname()}:{os.getpid()}"
# How long an http(s) store may take to accept a connection at first contact before it is reported
# as not answering.
CONNECT_TIMEOUT_S = 5


def tracking_uri(explicit: Optional[str] = None) -> str:
    """The store to use; the default SQLite file is made absolute (MLflow caches stores by URI, and
    workers must all reach the same file)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    path = sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None and not path.is_absolute() else uri


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names the store and what to do."""


class TrackingUriError(StoreError):
    """The tracking URI itself is wrong (a scheme MLflow has no store for): bad input, exit status 2."""


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (None for servers and databases in memory)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return Path(uri[len("sqlite:///"):].split("?")[0])


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the duration of the block."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _touch_store(uri: str) -> MlflowClient:
    """A client whose store has been opened (MLflow creates or verifies the schema on first use)."""
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)
    return client


def _create_sqlite_store(path: Path) -> None:
    """A new store at ``path``: MLflow's schema is built in a temporary file beside it, which is
    renamed into place once complete (a kill leaves at most the temporary file)."""
    for left in path.parent.glob(f".{path.name}.*.creating*"):  # creators killed earlier left them (and journals)
        left.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        _touch_store(f"sqlite:///{tmp}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _count_runs(path: Path) -> Optional[int]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return None


def explain_store_error(exc: BaseException, uri: str) -> Optional[str]:
    """One line saying what is wrong with the store and what to do, or None when ``exc`` is not a
    store problem. Recognises SQLite's locked, read-only, not-a-database and half-migrated states."""
    if isinstance(exc, StoreError):
        return str(exc)
    text, cause = "", exc
    while cause is not None:  # MLflow wraps SQLAlchemy, which wraps sqlite3
        text += f" {cause}"
        cause = cause.__cause__ or cause.__context__
    path = sqlite_path(uri)
    where = str(path) if path else uri
    if "database is locked" in text:
        return (f"MLflow store {where} is locked by another process (SQLite lets one process write at a "
                f"time); for concurrent workers run a tracking server (mlflow server) or use PostgreSQL "
                f"(--tracking-uri postgresql://...)")
    if "readonly database" in text or "read-only file system" in text.lower():
        return (f"MLflow store {where} is read-only; make it and its folder writable, or point "
                f"--tracking-uri at a writable store")
    if "file is not a database" in text or "disk image is malformed" in text:
        return (f"{where} is not a usable MLflow store (not a database, or damaged); move it aside "
                f"(mv {where} {where}.broken) and rerun, or point --tracking-uri at another store")
    if path is not None and any(m in text for m in ("already exists", "duplicate column", "out-of-date database schema",
                                                     "alembic_version", "no such table", "no such column")):
        runs = _count_runs(path)
        if not runs:
            return (f"{where} is a half-created MLflow store (its schema creation was interrupted) and holds "
                    f"no runs: move it aside (mv {where} {where}.broken) and rerun")
        return (f"{where} holds {runs} runs but its schema is not the one MLflow {mlflow.__version__} expects "
                f"(an interrupted or older migration): back it up, then run: mlflow db upgrade sqlite:///{path}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device of MLflow store {where}; free space and rerun"
    return None


def exit_on_environment_error(exc: BaseException, uri: str) -> int:
    """For a CLI's last ``except``: print one line and return exit status 1 for a store problem
    (``explain_store_error``) or a full disk while checkpointing, 2 for a malformed tracking URI;
    re-raise anything else."""
    message = str(exc) if isinstance(exc, NoSpaceError) else explain_store_error(exc, uri)
    if message is None:
        raise exc
    print(f"error: {message}", file=sys.stderr)
    return 2 if isinstance(exc, TrackingUriError) else 1


def _probe_server(uri: str) -> None:
    """A StoreError at once when nothing answers at an http(s) store. MLflow retries a refused or
    timed-out connection with backoff (minutes, silently). Any HTTP answer, even an error, passes:
    what a server that is not MLflow's says is reported by ``open_client``."""
    import requests  # MLflow's own HTTP client: the same proxies and certificates apply
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=(CONNECT_TIMEOUT_S, 30))
    except requests.exceptions.SSLError:  # a server answered; MLflow's TLS settings decide
        return
    except requests.exceptions.Timeout:
        reason = f"no answer within {CONNECT_TIMEOUT_S} s"
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        reason = ("connection refused" if "refused" in text else "host name not found"
                  if "resolve" in text or "Name or service" in text else "cannot connect")
    else:
        return
    url = urllib.parse.urlparse(uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    fix = (f"start one with: mlflow server --host {url.hostname} --port {port} --backend-store-uri "
           f"sqlite:///mlflow.db" if url.hostname in ("127.0.0.1", "localhost", "::1")
           else "check that the server runs and the address is right")
    raise StoreError(f"no MLflow server answers at {uri} ({reason}); {fix}, or drop --tracking-uri "
                     f"(and $MLFLOW_TRACKING_URI) to use ./mlflow.db")


def open_client(uri: str) -> MlflowClient:
    """A client on ``uri`` whose store exists and has MLflow's schema (see the module docstring)."""
    path = sqlite_path(uri)
    try:
        if path is None and urllib.parse.urlparse(uri).scheme in ("http", "https"):
            _probe_server(uri)
            try:
                return _touch_store(uri)
            except mlflow.exceptions.MlflowException as exc:  # not MLflow's API, or our credentials refused
                said = str(exc).split(". Response body")[0].splitlines()[0]
                raise StoreError(f"{uri} does not answer as an MLflow tracking server ({said}); check its address "
                                 f"(host, port, path) and credentials") from None
        if path is None:
            return _touch_store(uri)
        if not path.parent.is_dir():
            raise StoreError(f"MLflow store {path}: folder {path.parent} does not exist")
        if path.exists() and not path.is_file():  # MLflow would retry opening it for minutes
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise StoreError(f"MLflow store {path} is {kind}, not an SQLite file: move it aside (mv {path} "
                             f"{path}.aside) and rerun, or point --tracking-uri at another file")
        if not path.exists():  # an existing file is complete: it was renamed into place whole
            with file_lock(path.with_name(path.name + ".lock")):
                if not path.exists():
                    _create_sqlite_store(path)
        return _touch_store(uri)
    except UnsupportedModelRegistryStoreURIException:  # MLflow raises it for tracking stores too
        raise TrackingUriError(
            f"tracking URI {uri} (--tracking-uri or $MLFLOW_TRACKING_URI): MLflow has no store for scheme "
            f"{urllib.parse.urlparse(uri).scheme!r}; use sqlite:///<file>.db, file:<folder>, http(s)://<host>:<port> "
            f"of an MLflow server, postgresql://, mysql://, mssql:// or databricks") from None
    except Exception as exc:
        message = explain_store_error(exc, uri)
        if message is None:
            raise
        raise StoreError(message) from None


def worker_tags() -> Dict[str, str]:
    """Who holds a run: ``worker`` (host:pid), and inside Slurm the job (stable across requeues) and
    the GPUs Slurm gave it."""
    tags = {"worker": WORKER, "slurm_job": slurm_job(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return {k: v for k, v in tags.items() if v}


def is_live(run) -> bool:
    """RUNNING with a fresh heartbeat: a worker is on it right now. Not live, whatever the heartbeat:
    a run whose worker ran on this machine and whose process is gone, and a run of this very Slurm
    job (an earlier attempt of a requeued task): those are taken over at once."""
    beat = float(run.data.tags.get("heartbeat", 0))
    mine = slurm_job() is not None and run.data.tags.get("slurm_job") == slurm_job()
    return run.info.status == "RUNNING" and time.time() - beat < STALE_AFTER_S and not worker_gone(run) and not mine


def worker_gone(run) -> bool:
    """The run's recorded worker (``host:pid``) ran on this host and that process no longer exists."""
    host, _, pid = run.data.tags.get("worker", "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, owned by another user
        pass
    return False


def flatten(d: Dict, prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def environment() -> Dict[str, str]:
    """Package versions, Python, platform and the git commit of the working tree."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "worker": WORKER}
    for pkg in ("segtricks", "torch", "torchvision", "timm", "mlflow", "optuna", "numpy", "pandas"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    try:
        root = Path(__file__).resolve().parents[2]
        env["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        env["git_dirty"] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = "unknown"
    return env


class RunLog:
    """One MLflow run: tags, params, metrics, artifacts and its lifecycle."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.id = client, run_id

    def tags(self) -> Dict[str, str]:
        return self.client.get_run(self.id).data.tags

    def experiment_id(self) -> str:
        return self.client.get_run(self.id).info.experiment_id

    def set_tags(self, tags: Dict[str, object]) -> None:
        self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, params: Dict[str, str]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.id, params=items[i:i + 100])

    def log_config(self, cfg: Config, params: bool = True) -> None:
        """The resolved config (``config.yaml``), ``environment.json`` and, unless already logged
        (a resumed run), the flattened config as params."""
        self.client.log_text(self.id, resolved_yaml(cfg), "config.yaml")
        self.client.log_dict(self.id, environment(), "environment.json")
        if params:
            self.log_params(flatten(to_dict(cfg)))

    def log_metrics(self, metrics: Dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k.replace("/", "."), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.id, metrics=items[i:i + 500])

    def logged_steps(self, metric: str) -> set:
        return {m.step for m in self.client.get_metric_history(self.id, metric)}

    def log_epochs(self, history: List[Dict[str, float]]) -> None:
        """Every epoch of a training history that the run does not show yet (a kill between an
        epoch's checkpoint and its logging would otherwise lose it)."""
        logged = self.logged_steps("train.loss")
        for h in history:
            if h["epoch"] not in logged:
                self.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.id, text, path)

    def log_figure(self, fig, path: str) -> None:
        self.client.log_figure(self.id, fig, path)

    def log_file(self, path: Path, folder: Optional[str] = None) -> None:
        self.client.log_artifact(self.id, str(path), folder)

    def log_bytes(self, name: str, write, folder: Optional[str] = None) -> None:
        """An artifact written by ``write(path)`` into a temporary file called ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.client.log_artifact(self.id, str(path), folder)

    def finish(self) -> None:
        self.client.set_terminated(self.id, RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, reason: Optional[str] = None) -> None:
        """FAILED, with ``reason`` (default: the current exception's traceback) as ``traceback.txt``."""
        self.client.log_text(self.id, reason or traceback.format_exc(), "traceback.txt")
        self.client.set_terminated(self.id, RunStatus.to_string(RunStatus.FAILED))

    def status(self) -> str:
        return self.client.get_run(self.id).info.status

    def reopen(self) -> None:
        """RUNNING again (a study parent run continued by a later invocation)."""
        self.client.update_run(self.id, status="RUNNING")

    def heartbeat(self) -> "Heartbeat":
        return Heartbeat(self)


class Heartbeat:
    """Refreshes a run's ``heartbeat`` tag in the background while a worker holds the cell."""

    def __init__(self, run: RunLog) -> None:
        self.run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.run.set_tags({"heartbeat": time.time()})
            except Exception:  # a missed beat only risks a takeover after STALE_AFTER_S
                pass

    def __enter__(self) -> "Heartbeat":
        self.run.set_tags({"heartbeat": time.time(), **worker_tags()})
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Store:
    """A tracking store (``uri``): experiments, and the runs of this project in them."""

    def __init__(self, uri: Optional[str] = None) -> None:
        self.uri = tracking_uri(uri)
        self.client = open_client(self.uri)

    def experiment(self, name: str, description: str = "", create: bool = True) -> Optional[str]:
        """The id of the experiment ``name``, created (artifacts under ./mlruns for SQLite) if new.

        Tagged as a model-training experiment, so that ``mlflow ui`` opens on its runs table (MLflow 3
        otherwise shows its GenAI overview), with ``description`` as the experiment note.
        """
        exp = self.client.get_experiment_by_name(name)
        if exp is not None or not create:
            return None if exp is None else exp.experiment_id
        tags = {"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": description}
        location = (Path.cwd() / "mlruns").resolve().as_uri() if self.uri.startswith("sqlite:") else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=tags)
        except mlflow.exceptions.MlflowException:  # created by a concurrent worker just now
            return self.client.get_experiment_by_name(name).experiment_id

    def runs(self, exp_id: str, where: str = "") -> list:
        """Runs of an experiment matching an MLflow filter (``tags.x = 'y'``), oldest first."""
        return self.client.search_runs([exp_id], where, max_results=50_000, order_by=["attributes.start_time ASC"])

    def runs_by_hash(self, exp_id: str) -> Dict[str, list]:
        """Every cell run of the experiment grouped by its ``config_hash`` tag, oldest first."""
        out: Dict[str, list] = {}
        for run in self.runs(exp_id):
            h = run.data.tags.get("config_hash")
            if h:
                out.setdefault(h, []).append(run)
        return out

    def run(self, run_id: str) -> RunLog:
        return RunLog(self.client, run_id)

    def start(self, exp_id: str, name: str, tags: Dict[str, str], parent: Optional[str] = None) -> RunLog:
        """A new RUNNING run (nested under ``parent`` when given)."""
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        return RunLog(self.client, self.client.create_run(exp_id, tags=tags, run_name=name).info.run_id)

    def claim(self, exp_id: str, name: str, tags: Dict[str, str], since_ms: Optional[int] = None) -> Optional[RunLog]:
        """A RUNNING run for a cell, or None when another worker's claim of it won the race (this
        claim's run is then marked KILLED and deleted).

        Rivals are the cell's other RUNNING runs and its FINISHED runs, except (``since_ms``, for
        ``--force``) FINISHED runs started before that time: those are history, not claims. A FINISHED
        rival always wins; among RUNNING ones the earliest ``claimed_at`` (then run id) wins.

        ``claimed_at`` is taken once the run is in the store, not before it is created as MLflow's
        start time is: a claim whose insert waited (SQLite's write lock, a loaded machine) had an
        earlier start time than a rival that had already looked, seen no one and started training,
        and both trained. Taken after the insert, a rival this claim does not see claims later than
        this one, and sees it. A visible rival without ``claimed_at`` yet is between those two
        writes: it is waited for while it is live, for at most STALE_AFTER_S; then, or if it is dead, it
        counts as earlier (losing is always safe: the next plan waits for it, or resumes it)."""
        run = self.start(exp_id, name, {**tags, "heartbeat": str(time.time()), **worker_tags()})
        mine = (time.time(), run.id)
        run.set_tags({"claimed_at": repr(mine[0])})
        deadline = mine[0] + STALE_AFTER_S
        while True:
            rivals = [r for r in self.runs(exp_id, f"tags.config_hash = '{tags['config_hash']}'")
                      if r.info.run_id != run.id and (r.info.status == "RUNNING" or r.info.status == "FINISHED"
                                                      and (since_ms is None or r.info.start_time >= since_ms))]
            if time.time() > deadline or not any(r.info.status == "RUNNING" and "claimed_at" not in r.data.tags
                                                 and is_live(r) for r in rivals):
                break
            time.sleep(0.1)
        if any(r.info.status == "FINISHED" or "claimed_at" not in r.data.tags
               or (float(r.data.tags["claimed_at"]), r.info.run_id) < mine for r in rivals):
            self.client.set_terminated(run.id, RunStatus.to_string(RunStatus.KILLED))
            self.client.delete_run(run.id)
            return None
        return run

    def supersede(self, exp_id: str, run: RunLog, config_hash: str) -> None:
        """Tag the cell's other FINISHED runs ``superseded_by=<run>``: they stay as history, and
        ``run`` is the cell's current result (tables skip superseded runs)."""
        for old in self.runs(exp_id, f"tags.config_hash = '{config_hash}' and attributes.status = 'FINISHED'"):
            if old.info.run_id != run.id and "superseded_by" not in old.data.tags:
                self.run(old.info.run_id).set_tags({"superseded_by": run.id})

    def download(self, run_id: str, path: str, folder: str) -> Optional[str]:
        """A run's artifact downloaded into ``folder``, or None when the run has no such artifact."""
        parent = str(Path(path).parent) if "/" in path else None
        names = {a.path for a in self.client.list_artifacts(run_id, parent)}
        if path not in names:
            return None
        return self.client.download_artifacts(run_id, path, folder)
