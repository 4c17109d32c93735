"""The one MLflow interface of the project: a ``Store`` of experiments and runs, and ``RunLog``, one run.

``ablate``, ``tune`` and ``analysis`` call only this package (and ``segtricks.engine.hooks``, its
training hook); it imports no torch, so reading results does not load the model stack. Which store
(``segtricks.tracking.uri``), first contact and its failures (``connect``), claims and heartbeats
(``claims``), and the artifacts a run keeps (``artifacts``) have their own modules. ``mlflow ui
--backend-store-uri sqlite:///mlflow.db`` shows the default store, its artifacts under ``./mlruns``.

Metric names, one scheme everywhere: ``train.<term>`` and ``val.iou`` per epoch (step = epoch),
``<dataset>.<metric>`` for evaluations under our protocol and ``<dataset>.reference.<metric>`` under
the reference's, ``objective.<metric>`` for a study trial. Names with ``/`` are logged with ``.``.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import mlflow
from mlflow.entities import Dataset, DatasetInput, LoggedModelInput, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from segtricks import errors
from segtricks.config.schema import Config, resolved_yaml, to_dict
from segtricks.tracking import claims
from segtricks.tracking.connect import open_client
from segtricks.tracking.environment import environment
from segtricks.tracking.tags import (CELL, CLAIMED_AT, CONFIG_HASH, EXPERIMENT_KIND, GRID, HEARTBEAT, NOTE,
                                    PARENT_RUN, STUDY, SUPERSEDED_BY, TAKEOVER, TRAINING_HASH)
from segtricks.tracking.uri import tracking_uri

# Reading a run's small artifacts (records, samples) drew one "Downloading artifacts" bar per file, in
# make_tables dozens: noise a user cannot act on. Set the variable to true to see them again.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_filter(tags: Optional[Dict[str, str]] = None, status: Optional[str] = None) -> str:
    """MLflow's search filter for runs with these tag values (keys quoted: ours have dots) and status."""
    def quoted(value: str) -> str:  # MLflow's grammar has no escapes: a value with ' goes in "
        return f"'{value}'" if "'" not in str(value) else f'"{value}"'

    terms = [f"tags.`{k}` = {quoted(v)}" for k, v in (tags or {}).items()]
    terms += [f"attributes.status = {quoted(status)}"] if status else []
    return " and ".join(terms)


def flatten(d: Dict, prefix: str = "") -> Dict[str, str]:
    """A nested config as MLflow params: ``a.b`` keys, lists as JSON."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


MIN_PREFIX = 4  # the shortest run-id prefix taken for a run (the grid's summary prints 8 characters)


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

    def describe(self, markdown: str) -> None:
        """The run's description (the run page's Description, the runs table's tooltip)."""
        self.set_tags({NOTE: markdown})

    def log_inputs(self, inputs: Sequence[DatasetInput]) -> None:
        """Datasets the run used (``segtricks.tracking.dataset_inputs``); one already logged is not repeated."""
        self.client.log_inputs(self.id, datasets=list(inputs))

    def log_model_input(self, model_id: str) -> None:
        """A logged model the run used without logging it (a cell that reuses another run's training):
        the run page lists it under Logged models, the runs table in its Models column."""
        self.client.log_inputs(self.id, models=[LoggedModelInput(model_id)])

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

    def log_metrics(self, metrics: Dict[str, float], step: int = 0, model_id: Optional[str] = None,
                    dataset: Optional[Dataset] = None) -> None:
        """``model_id`` and ``dataset``: the logged model and the dataset the metrics are of; the
        model's page then lists them, with the dataset, beside those of the other runs that used it."""
        now = int(time.time() * 1000)
        linked = {"model_id": model_id, **({"dataset_name": dataset.name, "dataset_digest": dataset.digest}
                                           if dataset is not None else {})}
        items = [Metric(k.replace("/", "."), float(v), now, step, **linked) for k, v in metrics.items()]
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

    def kill(self, reason: str) -> None:
        """KILLED, with ``reason`` as ``traceback.txt``: stopped from outside (Ctrl-C, a dead worker's run
        that nobody resumes), not failed."""
        self.client.log_text(self.id, reason, "traceback.txt")
        self.client.set_terminated(self.id, RunStatus.to_string(RunStatus.KILLED))

    def status(self) -> str:
        return self.client.get_run(self.id).info.status

    def reopen(self) -> None:
        """RUNNING again (a study parent run continued by a later invocation)."""
        self.client.update_run(self.id, status="RUNNING")

    def heartbeat(self) -> claims.Heartbeat:
        return claims.Heartbeat(self)


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
        tags = {EXPERIMENT_KIND: "custom_model_development", NOTE: description}
        location = (Path.cwd() / "mlruns").resolve().as_uri() if self.uri.startswith("sqlite:") else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=tags)
        except mlflow.exceptions.MlflowException:  # created by a concurrent worker just now
            return self.client.get_experiment_by_name(name).experiment_id

    def runs(self, exp_id: str, tags: Optional[Dict[str, str]] = None, status: Optional[str] = None) -> list:
        """Runs of an experiment whose tags have the given values (and ``status``, e.g. FINISHED), oldest
        first. The store writes the MLflow filter: no other module spells one."""
        return self.client.search_runs([exp_id], run_filter(tags, status), max_results=50_000,
                                       order_by=["attributes.start_time ASC"])

    def runs_by_hash(self, exp_id: str) -> Dict[str, list]:
        """Every cell run of the experiment grouped by its ``config_hash`` tag, oldest first."""
        out: Dict[str, list] = {}
        for run in self.runs(exp_id):
            h = run.data.tags.get(CONFIG_HASH)
            if h:
                out.setdefault(h, []).append(run)
        return out

    def run(self, run_id: str) -> RunLog:
        return RunLog(self.client, run_id)

    def find_run(self, id_or_prefix: str):
        """The run whose id is ``id_or_prefix`` or, as the grid's summary prints 8 characters, the one
        run of any experiment whose id starts with it; None when no run matches. Two matches are an
        error that lists them."""
        try:
            return self.client.get_run(id_or_prefix)
        except mlflow.exceptions.MlflowException:
            pass
        if not id_or_prefix or any(c not in "0123456789abcdef" for c in id_or_prefix):
            return None
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        # MLflow filters run ids by equality only: the prefix is matched here
        found = [r for r in self.client.search_runs(experiments, max_results=50_000)
                 if r.info.run_id.startswith(id_or_prefix)]
        listed = ", ".join(f"{r.info.run_id[:8]} ({r.data.tags.get(CELL, r.info.run_name)})" for r in found[:5])
        listed += f" and {len(found) - 5} more" if len(found) > 5 else ""
        if found and len(id_or_prefix) < MIN_PREFIX:  # one digit matches a sixteenth of the runs: never a choice
            raise errors.BadInput(f"run id {id_or_prefix} is too short to name a run ({len(found)} run(s) start with "
                                  f"it: {listed}); give at least {MIN_PREFIX} characters, as the grid's summary prints")
        if len(found) > 1:
            raise errors.BadInput(f"run id {id_or_prefix} is the start of {len(found)} runs' ids: {listed}; "
                                  f"give more of it")
        return found[0] if found else None

    def start(self, exp_id: str, name: str, tags: Dict[str, str], parent: Optional[str] = None) -> RunLog:
        """A new RUNNING run (nested under ``parent`` when given)."""
        tags = {**tags, **({PARENT_RUN: parent} if parent else {})}
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
        writes: it is waited for while it is live, for at most ``claims.STALE_AFTER_S``; then, or if it
        is dead, it counts as earlier (losing is always safe: the next plan waits for it, or resumes it)."""
        run = self.start(exp_id, name, {**tags, HEARTBEAT: str(time.time()), **claims.worker_tags()})
        mine = (time.time(), run.id)
        run.set_tags({CLAIMED_AT: repr(mine[0])})
        deadline = mine[0] + claims.STALE_AFTER_S
        while True:
            rivals = [r for r in self.runs(exp_id, {CONFIG_HASH: tags[CONFIG_HASH]})
                      if r.info.run_id != run.id and (r.info.status == "RUNNING" or r.info.status == "FINISHED"
                                                      and (since_ms is None or r.info.start_time >= since_ms))]
            if time.time() > deadline or not any(r.info.status == "RUNNING" and CLAIMED_AT not in r.data.tags
                                                 and claims.is_live(r) for r in rivals):
                break
            time.sleep(0.1)
        if any(r.info.status == "FINISHED" or CLAIMED_AT not in r.data.tags
               or (float(r.data.tags[CLAIMED_AT]), r.info.run_id) < mine for r in rivals):
            self.client.set_terminated(run.id, RunStatus.to_string(RunStatus.KILLED))
            self.client.delete_run(run.id)
            return None
        return run

    def take_over(self, run_id: str) -> Optional[RunLog]:
        """A dead worker's RUNNING run, to resume in place, or None when another worker takes it over
        (or it is no longer RUNNING, or beats again).

        The same rule as ``claim``: each worker that found the run stale writes its own
        ``takeover.<worker>`` tag, first ``pending:<time>`` and then, once that is in the store, the
        time; among the takeovers newer than the stale heartbeat this worker read first, the earliest
        (time, then tag) wins. A pending rival is waited for while it is younger than
        ``claims.STALE_AFTER_S`` (its writer may still be between the two writes), then ignored (its
        writer died there). Without this, two workers that found the same stale run both resumed it."""
        seen = self.client.get_run(run_id)
        stale_beat = float(seen.data.tags.get(HEARTBEAT, 0))
        if seen.info.status != "RUNNING" or claims.is_live(seen):
            return None
        mine = claims.takeover_tag()
        run = RunLog(self.client, run_id)
        run.set_tags({mine: f"pending:{time.time()!r}"})
        me = (time.time(), mine)
        run.set_tags({mine: repr(me[0])})
        while True:
            now, pending, rivals = time.time(), False, []
            for key, value in self.client.get_run(run_id).data.tags.items():
                if not key.startswith(TAKEOVER) or key == mine:
                    continue
                if value.startswith("pending:"):
                    pending |= stale_beat < float(value[len("pending:"):]) > now - claims.STALE_AFTER_S
                elif float(value) > stale_beat:
                    rivals.append((float(value), key))
            if not pending:
                break
            time.sleep(0.1)
        return None if any(rival < me for rival in rivals) else run

    def supersede(self, exp_id: str, run: RunLog, config_hash: str) -> None:
        """Tag the cell's other FINISHED runs ``superseded_by=<run>``: they stay as history, and
        ``run`` is the cell's current result (tables skip superseded runs)."""
        for old in self.runs(exp_id, {CONFIG_HASH: config_hash}, status="FINISHED"):
            if old.info.run_id != run.id and SUPERSEDED_BY not in old.data.tags:
                self.run(old.info.run_id).set_tags({SUPERSEDED_BY: run.id})

    def training_labels(self) -> Dict[str, set]:
        """Training hash (first 16 digits) → the grids whose runs used it, and ``study:<name>`` for a
        study's trials, over every experiment (what ``segtricks.cache`` shows beside each cache)."""
        labels: Dict[str, set] = {}
        experiments = [e.experiment_id for e in _pages(self.client.search_experiments)]
        search = functools.partial(self.client.search_runs, experiments, f"tags.`{TRAINING_HASH}` != ''")
        for run in _pages(search) if experiments else []:
            tags = run.data.tags
            label = tags.get(GRID) or (f"study:{tags[STUDY]}" if tags.get(STUDY) else None)
            if label:
                labels.setdefault(tags[TRAINING_HASH][:16], set()).add(label)
        return labels

    def download(self, run_id: str, path: str, folder: str) -> Optional[str]:
        """A run's artifact downloaded into ``folder``, or None when the run has no such artifact."""
        parent = str(Path(path).parent) if "/" in path else None
        names = {a.path for a in self.client.list_artifacts(run_id, parent)}
        if path not in names:
            return None
        return self.client.download_artifacts(run_id, path, folder)


def _pages(search) -> list:
    """Every result of a paged MLflow search."""
    out, token = [], None
    while True:
        page = search(page_token=token)
        out += page
        token = page.token
        if not token:
            return out
