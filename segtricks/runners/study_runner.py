"""Running an Optuna study: each trial a training (shared by training hash with the ablation runner)
and an MLflow run nested under the study's parent run. ``segtricks.tune`` is its command line
(``segtricks.launchers.launch.launch_study``); Slurm workers run the same ``tune`` loop
(``segtricks.runners.tasks.StudyTask``).

Trials of a killed worker stop heart-beating and are failed and retried once. Each trial reports its
validation metric every epoch, so unpromising trials are pruned (``segtricks.engine.hooks.Pruning``).
A trial that changes only post-processing parameters (GF radius, eps) reuses an equal training
instead of training again. The study's plots: ``segtricks.runners.study_plots``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import optuna
import yaml
from optuna.trial import TrialState

from segtricks import errors
from segtricks.runtime.device import resolve_device
from segtricks.engine.hooks import EpochLogger, Pruning
from segtricks.engine.training import Training
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.files import file_lock
from segtricks.method.tricks import post_trick_names
from segtricks.estimate.cost import estimate_grid
from segtricks.estimate.report import format_estimate, human_s
from segtricks.files import free_bytes
from segtricks.runners.study_plots import write_study_plots
from segtricks.config.schema import config_hash, hashed_fields
from segtricks.config.grid import Cell
from segtricks.config.study import StudySpec
from segtricks.config.vocabulary import needs_structure
from segtricks.tracking import tags
from segtricks.tracking.store import RunLog, Store, flatten
from segtricks.tracking.uri import runs_page, sqlite_path, tracking_uri

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class StorageError(errors.BadInput):
    """The study storage cannot be reached or opened (its URL, folder, server or driver)."""


def default_storage() -> str:
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def journal_path(url: str) -> Optional[Path]:
    """The file of a ``journal:PATH`` storage (``journal:///abs/study.log`` or ``journal:study.log``)."""
    if not url.startswith("journal:"):
        return None
    raw = url[len("journal:"):]
    return Path(raw[2:] if raw.startswith("//") else raw).resolve()


def open_study(spec: StudySpec, url: str, create: bool = True) -> optuna.Study:
    """The study ``spec.name`` in storage ``url``, created with the storage when new; with ``create``
    false, a storage or study that does not exist is an error and nothing is created."""
    heartbeat = int(os.environ.get("SEGTRICKS_OPTUNA_HEARTBEAT_S", 60))  # a trial is stale after 2 missed beats
    journal = journal_path(url)
    path = sqlite_path(url)
    if not create and (journal or path) is not None and not (journal or path).is_file():
        raise StorageError(f"no study storage at {journal or path}: study {spec.name!r} was never run there "
                           f"(run it first, or pass the --storage it ran with)")
    if journal is not None:  # a file on a shared filesystem: for clusters without a database server
        from optuna.storages.journal import JournalFileBackend
        if not journal.parent.is_dir():
            raise StorageError(f"journal storage {journal}: folder {journal.parent} does not exist")
        return load_or_create_study(spec, optuna.storages.JournalStorage(JournalFileBackend(str(journal))), create)
    try:
        # workers started at once on a fresh SQLite file would race Optuna's table creation
        with file_lock(path.with_name(path.name + ".lock")) if path else contextlib.nullcontext(), \
                warnings.catch_warnings():
            # the heartbeat options are experimental in Optuna; we chose them on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
            return load_or_create_study(spec, storage, create)
    except StorageError:
        raise
    except Exception as exc:  # SQLAlchemy/driver errors of every kind end in the same advice
        raise StorageError(f"cannot open study storage {url}: {type(exc).__name__}: {exc}. Check the URL, that the "
                           f"database server is running and reachable, and its driver is installed "
                           f"(PostgreSQL: pip install 'psycopg[binary]')") from None


def load_or_create_study(spec: StudySpec, storage: optuna.storages.BaseStorage, create: bool = True) -> optuna.Study:
    if not create:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        if spec.name not in names:
            raise StorageError(f"no study {spec.name!r} in {storage_name(storage)} (studies there: "
                               f"{', '.join(sorted(names)) or 'none'}); run it first, or pass the --storage it ran with")
    return optuna.create_study(storage=storage, study_name=spec.name, direction=spec.direction,
                               sampler=spec.make_sampler(), pruner=spec.make_pruner(), load_if_exists=True)


def storage_name(storage: optuna.storages.BaseStorage) -> str:
    url = getattr(storage, "url", None)
    return str(url) if url else type(storage).__name__


# The study's user attributes holding the base config it optimises (every trial's config less its
# parameters): its hash, and its fields as flattened keys, what a continuation is compared with.
BASE_CONFIG_HASH = "segtricks.base_config_hash"
BASE_CONFIG_ATTR = "segtricks.base_config"


def check_base_config(study: optuna.Study, spec: StudySpec) -> None:
    """Record the config ``spec`` optimises on a new study; refuse to continue a study that optimised
    another (other ``--set`` flags, an edited base or study file), since its trials and its best
    would mix two training configs. A study from before this record is adopted as it is."""
    base = spec.config({})
    mine = {k: v for k, v in flatten(hashed_fields(base)).items() if k not in spec.space}
    stored = study.user_attrs.get(BASE_CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(BASE_CONFIG_HASH, config_hash(base))
        study.set_user_attr(BASE_CONFIG_ATTR, mine)
        return
    differ = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
    if differ:
        shown = "; ".join(f"{k}: {stored.get(k, '(unset)')} in the study, {mine.get(k, '(unset)')} now"
                          for k in differ[:4]) + (f"; and {len(differ) - 4} more" if len(differ) > 4 else "")
        raise errors.BadInput(f"study {spec.name!r} optimises another config than this command's ({shown}); "
                              f"continue it with the flags it ran with, or start a new study with "
                              f"--study-name {spec.name}-2")


def mlflow_parent(store: Store, spec: StudySpec) -> RunLog:
    exp_id = store.experiment(f"study-{spec.name}", f"Optuna study {spec.name} ({spec.path})")
    found = store.runs(exp_id, {tags.STUDY: spec.name, tags.ROLE: tags.ROLE_STUDY})
    if found:
        parent = store.run(found[0].info.run_id)
        parent.reopen()  # terminated by the previous invocation
        return parent
    run = store.start(exp_id, f"study {spec.name}", {tags.STUDY: spec.name, tags.ROLE: tags.ROLE_STUDY})
    run.log_params({"objective": f"{spec.objective_ref.name}/{spec.objective_ref.split}.{spec.metric}",
                    "direction": spec.direction, "n_trials": str(spec.n_trials)})
    return run


def objective_fn(spec: StudySpec, store: Store, parent: RunLog, output_root: str, device: str):
    exp_id = parent.experiment_id()

    def objective(trial: optuna.Trial) -> float:
        params = spec.suggest(trial)
        training = Training.in_root(spec.config(params), output_root)
        cfg = training.cfg
        trial.set_user_attr("training_hash", training.hash)
        run = store.start(exp_id, f"trial {trial.number}", {tags.STUDY: spec.name, tags.TRIAL: str(trial.number),
                                                             tags.TRAINING_HASH: training.hash}, parent=parent.id)
        run.log_params({k: str(v) for k, v in params.items()})
        trial.set_user_attr("mlflow_run_id", run.id)  # closed FAILED if a killed worker leaves it RUNNING
        pruning = Pruning(trial)
        try:
            training.run([EpochLogger(run), pruning])
            trial.set_user_attr("trained", bool(pruning.epochs_run))
            dev = resolve_device(device)
            ev = evaluate_model(training.model(dev), cfg, spec.objective_ref, post_trick_names(cfg.tricks), dev,
                                with_structure=needs_structure([spec.metric]),
                                progress=False, cache_dir=training.folder.predictions,
                                keys_dir=training.folder.keys)
            value = ev.results()[spec.metric]
        except KeyboardInterrupt:  # Optuna fails the trial; its run is stopped, not failed
            run.set_tags({tags.OPTUNA_STATE: "FAIL"})
            run.kill("interrupted (Ctrl-C); rerunning the same command continues the study")
            raise
        except optuna.TrialPruned:
            trial.set_user_attr("trained", bool(pruning.epochs_run))
            run.set_tags({tags.OPTUNA_STATE: "PRUNED", tags.PRUNED: "true"})
            run.finish()
            raise
        except Exception:
            run.set_tags({tags.OPTUNA_STATE: "FAIL"})
            run.fail()
            raise
        run.log_metrics({f"objective.{spec.metric}": value})
        run.set_tags({tags.OPTUNA_STATE: "COMPLETE", tags.PRUNED: "false",
                      tags.TRAINED: str(bool(pruning.epochs_run)).lower()})
        run.finish()
        return value

    return objective


def log_study(parent: RunLog, study: optuna.Study) -> None:
    """Best parameters and the study's plots on the parent run."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    parent.log_metrics({"n_complete": len(complete), "n_pruned": sum(t.state == TrialState.PRUNED for t in study.trials)})
    if not complete:
        return
    parent.set_tags({f"best.{k}": v for k, v in study.best_params.items()})
    parent.log_metrics({"best_value": study.best_value})
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_study_plots(study, Path(tmp)):
            parent.log_file(path, "plots")


def best_override(study: optuna.Study) -> str:
    """YAML that `segtricks.ablate --set` (one line each) or a grid's `set:` block accepts."""
    best = study.best_params
    lines = [f"# best {study.direction.name.lower()} value {study.best_value:.4f} (trial {study.best_trial.number})",
             yaml.safe_dump({"set": best}, sort_keys=True).strip(), "# as command-line overrides:",
             "# " + " ".join(f"--set {k}={v}" for k, v in sorted(best.items()))]
    return "\n".join(lines)


def tune(spec: StudySpec, storage: str, n_trials: Optional[int] = None, uri: Optional[str] = None,
         output_root: str = "outputs", device: str = "auto",
         enqueue: Optional[List[Dict[str, Any]]] = None, worker: int = 0) -> optuna.Study:
    """Run trials until the study has ``n_trials`` (default: the spec's) complete or pruned ones, logging
    them to the MLflow store ``uri``; ``worker`` (a Slurm array index) seeds its sampler apart."""
    store = Store(uri)  # first: a store that cannot be opened must leave no study storage behind
    study = open_study(spec, storage)
    check_base_config(study, spec)
    study.sampler = spec.make_sampler(len(study.trials), worker)
    for params in enqueue or []:
        study.enqueue_trial(params, skip_if_exists=True)
    total = n_trials if n_trials is not None else spec.n_trials
    done = sum(t.state in DONE for t in study.trials)
    parent = mlflow_parent(store, spec)
    if done < total:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study.optimize(objective_fn(spec, store, parent, output_root, device), n_trials=total - done,
                           callbacks=[optuna.study.MaxTrialsCallback(total, states=DONE)], catch=(RuntimeError,),
                           show_progress_bar=True)
        except KeyboardInterrupt:  # the next invocation reopens the parent and continues the study
            parent.kill("interrupted (Ctrl-C); rerunning the same command continues the study")
            raise
    close_failed_trial_runs(store, study)
    log_study(parent, study)
    parent.finish()
    return study


def print_study_summary(spec: StudySpec, study: optuna.Study, storage: str) -> None:
    """Trial counts by state, and the best parameters as an override when a trial completed."""
    states = [t.state.name for t in study.trials]
    print(f"study {spec.name}: {len(states)} trials ({states.count('COMPLETE')} complete, "
          f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed) in {storage}")
    if states.count("COMPLETE"):
        print(best_override(study))


def print_next_steps(spec: StudySpec, study: optuna.Study, args: argparse.Namespace, storage: str) -> None:
    """What a user does with a finished study: its best parameters as overrides, and its runs in the
    MLflow UI (a direct link to the study's runs table, ``runs_page``)."""
    uri = tracking_uri(args.tracking_uri)
    exp_id = Store(uri).experiment(f"study-{spec.name}", create=False)
    where = ("" if storage == default_storage() else f" --storage {storage}") + (
        f" --study-name {args.study_name}" if getattr(args, "study_name", None) else "")
    print("Next:")
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        print(f"  python -m segtricks.tune --study {args.study}{where} --best   # as --set flags / a grid's set: block")
    done = sum(t.state in DONE for t in study.trials)
    print(f"  python -m segtricks.tune --study {args.study}{where} --n-trials {done + spec.n_trials}"
          f"   # {spec.n_trials} more trials")
    print(f"  {runs_page(uri, exp_id)}")


def close_failed_trial_runs(store: Store, study: optuna.Study) -> None:
    """Trials that Optuna failed because their worker died (stale heartbeat) leave their MLflow run
    RUNNING: close it FAILED, saying why."""
    for t in study.trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.state == TrialState.FAIL and run_id:
            run = store.run(run_id)
            if run.status() == "RUNNING":
                run.fail(f"trial {t.number} failed: its worker stopped sending heartbeats (killed or lost); "
                         f"Optuna retried its parameters as a new trial")


def estimate_study(spec: StudySpec, args: argparse.Namespace) -> str:
    """``tune --estimate``: one trial of the base config priced as a grid cell (training with its
    per-epoch validation, then the objective's evaluation), times the trials left. An upper bound:
    pruned trials stop early, and trials that change only post-processing share a training."""
    cfg = spec.config({})
    cfg.eval = [spec.objective_ref]
    training = Training.in_root(cfg, args.output_root)
    trial = Cell("one trial", training.cfg, config_hash(training.cfg), training)
    store_file = sqlite_path(tracking_uri(args.tracking_uri))
    est = estimate_grid([trial], {}, resolve_device(args.device), args.estimate_steps,
                        store_exists=store_file is None or store_file.is_file(), remeasure=args.remeasure)
    n = args.n_trials or spec.n_trials
    one = est.cells[0].total_s
    return (format_estimate(est, free_bytes(Path(args.output_root)))
            + f"\n  study {spec.name}: up to {n} trials × {human_s(one)} + start-up "
              f"{human_s(est.startup_s)} ≈ {human_s(est.startup_s + n * one)} (at most: pruned "
              f"trials stop early, and trials that change only post-processing share a training)")
