"""Running an Optuna study: each trial a training (shared by training hash with the ablation runner)
and an MLflow run nested under the study's parent run; ``segtricks.tune`` is its command line.

Trials of a killed worker stop heart-beating and are failed and retried once. Each trial reports its
validation metric every epoch, so unpromising trials are pruned. A trial that changes only
post-processing parameters (GF radius, eps) reuses an equal training instead of training again.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import optuna  # noqa: E402
import submitit  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from segtricks.runners import estimate, preflight, slurm  # noqa: E402

from segtricks.tracking import store as tracking
from segtricks.spec.config import ConfigError, config_hash  # noqa: E402
from segtricks.evaluation.model_evaluation import evaluate_model  # noqa: E402
from segtricks.spec.grid import Cell  # noqa: E402
from segtricks.spec.study import StudySpec, load_study  # noqa: E402
from segtricks.engine.hooks import EpochLogger  # noqa: E402
from segtricks.engine.loop import Hook, LoopState, resolve_device  # noqa: E402
from segtricks.engine.training import Training  # noqa: E402
from segtricks.method.tricks import post_trick_names  # noqa: E402

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class StorageError(RuntimeError):
    """The study storage cannot be reached or opened."""


def default_storage() -> str:
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def journal_path(url: str) -> Optional[Path]:
    """The file of a ``journal:PATH`` storage (``journal:///abs/study.log`` or ``journal:study.log``)."""
    if not url.startswith("journal:"):
        return None
    raw = url[len("journal:"):]
    return Path(raw[2:] if raw.startswith("//") else raw).resolve()


def open_study(spec: StudySpec, url: str) -> optuna.Study:
    heartbeat = int(os.environ.get("SEGTRICKS_OPTUNA_HEARTBEAT_S", 60))  # a trial is stale after 2 missed beats
    journal = journal_path(url)
    if journal is not None:  # a file on a shared filesystem: for clusters without a database server
        from optuna.storages.journal import JournalFileBackend
        if not journal.parent.is_dir():
            raise StorageError(f"journal storage {journal}: folder {journal.parent} does not exist")
        return load_or_create_study(spec, optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    path = tracking.sqlite_path(url)
    try:
        # workers started at once on a fresh SQLite file would race Optuna's table creation
        with tracking.file_lock(path.with_name(path.name + ".lock")) if path else contextlib.nullcontext(), \
                warnings.catch_warnings():
            # the heartbeat options are experimental in Optuna; we chose them on purpose
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
            return load_or_create_study(spec, storage)
    except Exception as exc:  # SQLAlchemy/driver errors of every kind end in the same advice
        raise StorageError(f"cannot open study storage {url}: {type(exc).__name__}: {exc}. Check the URL, that the "
                           f"database server is running and reachable, and its driver is installed "
                           f"(PostgreSQL: pip install 'psycopg[binary]')") from None


def load_or_create_study(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=spec.name, direction=spec.direction,
                               sampler=spec.make_sampler(), pruner=spec.make_pruner(), load_if_exists=True)


def mlflow_parent(store: tracking.Store, spec: StudySpec) -> tracking.RunLog:
    exp_id = store.experiment(f"study-{spec.name}", f"Optuna study {spec.name} ({spec.path})")
    found = store.runs(exp_id, f"tags.study = '{spec.name}' and tags.role = 'study'")
    if found:
        parent = store.run(found[0].info.run_id)
        parent.reopen()  # terminated by the previous invocation
        return parent
    run = store.start(exp_id, f"study {spec.name}", {"study": spec.name, "role": "study"})
    run.log_params({"objective": f"{spec.objective_ref.name}/{spec.objective_ref.split}.{spec.metric}",
                    "direction": spec.direction, "n_trials": str(spec.n_trials)})
    return run


class Pruning(Hook):
    """Training hook: reports each epoch's validation IoU to the trial and stops a trial the pruner
    rejects (the epoch's checkpoint is already saved, so an equal later trial resumes it). The last
    epoch is reported but never pruned: its training is complete, and pruning would only discard it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.epochs_run: List[int] = []

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        self.epochs_run.append(state.epoch)
        self.trial.report(metrics["val.iou"], state.epoch)
        if state.epoch + 1 < state.cfg.optim.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {state.epoch + 1} (validation IoU {metrics['val.iou']:.3f})")


def objective_fn(spec: StudySpec, store: tracking.Store, parent: tracking.RunLog, output_root: str, device: str):
    exp_id = parent.experiment_id()

    def objective(trial: optuna.Trial) -> float:
        params = spec.suggest(trial)
        training = Training.in_root(spec.config(params), output_root)
        cfg = training.cfg
        trial.set_user_attr("training_hash", training.hash)
        run = store.start(exp_id, f"trial {trial.number}", {"study": spec.name, "trial": str(trial.number),
                                                             "training_hash": training.hash}, parent=parent.id)
        run.log_params({k: str(v) for k, v in params.items()})
        trial.set_user_attr("mlflow_run_id", run.id)  # closed FAILED if a killed worker leaves it RUNNING
        pruning = Pruning(trial)
        try:
            training.run([EpochLogger(run), pruning])
            trial.set_user_attr("trained", bool(pruning.epochs_run))
            dev = resolve_device(device)
            ev = evaluate_model(training.model(dev), cfg, spec.objective_ref, post_trick_names(cfg.tricks), dev,
                                with_structure=spec.metric in ("s_measure", "max_e_measure", "mean_e_measure"),
                                progress=False, cache_dir=training.dir / "predictions",
                                keys_dir=training.keys_dir)
            value = ev.results()[spec.metric]
        except optuna.TrialPruned:
            trial.set_user_attr("trained", bool(pruning.epochs_run))
            run.set_tags({"optuna.state": "PRUNED", "pruned": "true"})
            run.finish()
            raise
        except Exception:
            run.set_tags({"optuna.state": "FAIL"})
            run.fail()
            raise
        run.log_metrics({f"objective.{spec.metric}": value})
        run.set_tags({"optuna.state": "COMPLETE", "pruned": "false", "trained": str(bool(pruning.epochs_run)).lower()})
        run.finish()
        return value

    return objective


def log_study(parent: tracking.RunLog, study: optuna.Study) -> None:
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


def write_study_plots(study: optuna.Study, folder: Path) -> List[Path]:
    """Optuna's optimisation history, slice and (given two varied parameters) importance plots as
    ``<folder>/<name>.png``; a plot Optuna cannot draw for this study is skipped with a note."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    plots = {"optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
             "slice": optuna.visualization.matplotlib.plot_slice}
    if len(complete) >= 2 and len(study.best_params) >= 2:
        plots["param_importances"] = optuna.visualization.matplotlib.plot_param_importances
    written = []
    for name, plot in plots.items():
        # Optuna switches matplotlib to its ggplot style globally: keep that to these figures
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # we chose these plots
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of constant objectives
                print(f"note: {name} plot skipped: {exc}", file=sys.stderr)
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            if not hasattr(ax, "flat"):  # the slice plot's panels keep Optuna's width each
                fig.set_size_inches(8, 5)
            for panel in fig.axes:
                if panel.get_xscale() == "log":
                    thin_log_ticks(panel)
            if name == "slice":  # its colour bar counts trials: no "trial 0.4" ticks
                fig.axes[-1].yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            written.append(folder / f"{name}.png")
            # the slice plot's colour bar has its own axes beside the panels; a tight box keeps it
            fig.savefig(written[-1], dpi=120, bbox_inches="tight")
            plt.close(fig)
    return written


def thin_log_ticks(ax) -> None:
    """At most three round ticks (decades, else 1-3, 1-2-5 or 1…9 × 10^k) on a log x axis, printed
    plainly: matplotlib labels minor ticks of axes spanning under a decade, and in a narrow slice
    panel those long labels overprint."""
    lo, hi = ax.get_xlim()
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for subs in ((1,), (1, 3), (1, 2, 5), range(1, 10)):  # the coarsest set giving two ticks
        ticks = [s * 10.0 ** k for k in decades for s in subs if lo <= s * 10.0 ** k <= hi]
        if len(ticks) >= 2:
            break
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks[::math.ceil(len(ticks) / 3) or 1]))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def best_override(study: optuna.Study) -> str:
    """YAML that `segtricks.ablate --set` (one line each) or a grid's `set:` block accepts."""
    best = study.best_params
    lines = [f"# best {study.direction.name.lower()} value {study.best_value:.4f} (trial {study.best_trial.number})",
             yaml.safe_dump({"set": best}, sort_keys=True).strip(), "# as command-line overrides:",
             "# " + " ".join(f"--set {k}={v}" for k, v in sorted(best.items()))]
    return "\n".join(lines)


def tune(spec: StudySpec, storage: str, n_trials: Optional[int] = None, tracking_uri: Optional[str] = None,
         output_root: str = "outputs", device: str = "auto",
         enqueue: Optional[List[Dict[str, Any]]] = None, worker: int = 0) -> optuna.Study:
    study = open_study(spec, storage)
    study.sampler = spec.make_sampler(len(study.trials), worker)
    for params in enqueue or []:
        study.enqueue_trial(params, skip_if_exists=True)
    total = n_trials if n_trials is not None else spec.n_trials
    done = sum(t.state in DONE for t in study.trials)
    store = tracking.Store(tracking_uri)
    parent = mlflow_parent(store, spec)
    if done < total:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective_fn(spec, store, parent, output_root, device), n_trials=total - done,
                       callbacks=[optuna.study.MaxTrialsCallback(total, states=DONE)], catch=(RuntimeError,),
                       show_progress_bar=True)
    close_failed_trial_runs(store, study)
    log_study(parent, study)
    parent.finish()
    return study


@dataclass
class StudyJob:
    """One Slurm array task of a study: the ordinary ``tune`` loop on the shared storage."""

    study: str  # study name, or an absolute YAML path
    flags: List[str]
    storage: str
    n_trials: Optional[int]
    uri: str
    output_root: str
    worker: int


class StudyTask(submitit.helpers.Checkpointable):
    """A study worker as a Slurm array task; requeued on preemption, it continues the study (the
    interrupted trial is failed by Optuna's heartbeat and retried)."""

    def __call__(self, job: StudyJob) -> int:
        spec = load_study(job.study, job.flags)
        study = tune(spec, job.storage, job.n_trials, job.uri, job.output_root, worker=job.worker)
        return sum(t.state == TrialState.COMPLETE for t in study.trials)


def submit_study(spec: StudySpec, args, storage: str, opts: slurm.SlurmOptions) -> int:
    """``--launcher slurm --workers N``: N array tasks on one storage; the study, its MLflow experiment
    and parent run are created first so that the tasks do not race to create them."""
    uri = tracking.tracking_uri(args.tracking_uri)
    slurm.preflight(opts, {"MLflow store": tracking.sqlite_path(uri),
                           "Optuna storage": tracking.sqlite_path(storage) or journal_path(storage)})
    open_study(spec, storage)
    mlflow_parent(tracking.Store(uri), spec).finish()
    ref = args.study if not args.study.endswith((".yaml", ".yml")) else str(Path(args.study).resolve())
    jobs = [StudyJob(ref, list(args.set), storage, args.n_trials, uri, str(Path(args.output_root).resolve()), i)
            for i in range(args.workers)]
    submitted = slurm.executor(opts, f"segtricks-study-{spec.name}").map_array(StudyTask(), jobs)
    print(f"study {spec.name}: submitted {len(submitted)} Slurm array task(s) on {storage} "
          f"(logs: {opts.folder}/<job id>/): {', '.join(j.job_id for j in submitted)}")
    if not opts.wait:
        print(f"Follow it with: python -m segtricks.tune --study {args.study} --storage {storage} --best")
        return 0
    errors = slurm.wait_for(submitted, f"study {spec.name}")
    for error in filter(None, errors):
        print(f"error: {error}", file=sys.stderr)
    study = open_study(spec, storage)
    print_study_summary(spec, study, storage)
    print_next_steps(spec, study, args, storage)
    return 1 if any(errors) else 0


def print_study_summary(spec: StudySpec, study: optuna.Study, storage: str) -> None:
    """Trial counts by state, and the best parameters as an override when a trial completed."""
    states = [t.state.name for t in study.trials]
    print(f"study {spec.name}: {len(states)} trials ({states.count('COMPLETE')} complete, "
          f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed) in {storage}")
    if states.count("COMPLETE"):
        print(best_override(study))


def print_next_steps(spec: StudySpec, study: optuna.Study, args: argparse.Namespace, storage: str) -> None:
    """What a user does with a finished study: its best parameters as overrides, and its runs in the
    MLflow UI (a direct link to the study's runs: the UI's home page opens on its GenAI view)."""
    uri = tracking.tracking_uri(args.tracking_uri)
    exp_id = tracking.Store(uri).experiment(f"study-{spec.name}", create=False)
    where = "" if storage == default_storage() else f" --storage {storage}"
    print("Next:")
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        print(f"  python -m segtricks.tune --study {args.study}{where} --best   # as --set flags / a grid's set: block")
    done = sum(t.state in DONE for t in study.trials)
    print(f"  python -m segtricks.tune --study {args.study}{where} --n-trials {done + spec.n_trials}"
          f"   # {spec.n_trials} more trials")
    if uri.startswith("sqlite:"):
        print(f"  mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/#/experiments/{exp_id}")
    else:
        print(f"  the runs: {uri.rstrip('/')}/#/experiments/{exp_id}")


def close_failed_trial_runs(store: tracking.Store, study: optuna.Study) -> None:
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
    store = tracking.sqlite_path(tracking.tracking_uri(args.tracking_uri))
    est = estimate.estimate_grid([trial], {}, resolve_device(args.device), args.estimate_steps,
                                 store_exists=store is None or store.is_file())
    n = args.n_trials or spec.n_trials
    one = est.cells[0].total_s
    return (estimate.format_estimate(est, estimate.free_bytes(Path(args.output_root)))
            + f"\n  study {spec.name}: up to {n} trials × {estimate.human_s(one)} + start-up "
              f"{estimate.human_s(est.startup_s)} ≈ {estimate.human_s(est.startup_s + n * one)} (at most: pruned "
              f"trials stop early, and trials that change only post-processing share a training)")


def launch(spec: StudySpec, args: argparse.Namespace) -> int:
    """What ``python -m segtricks.tune`` does once its arguments and study are known to be valid."""
    storage = args.storage or default_storage()
    if not args.best:  # every trial needs the base config's weights and datasets: check before any run
        error = preflight.output_root_error(args.output_root)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        missing = preflight.Preflight(download=not args.estimate).missing(spec.config({}), trains=True)
        if missing:
            print(f"error: {preflight.report({f'study {spec.name}': missing})}", file=sys.stderr)
            return 2
    if args.estimate:
        print(estimate_study(spec, args))
        return 0
    try:
        if args.launcher == "slurm" and not args.best:
            return submit_study(spec, args, storage, slurm.options_from(args, args.output_root))
        if args.best:
            study = open_study(spec, storage)
            if not any(t.state == TrialState.COMPLETE for t in study.trials):
                print(f"error: study {spec.name!r} in {storage} has no completed trial yet", file=sys.stderr)
                return 2
            print(best_override(study))
            return 0
        study = tune(spec, storage, args.n_trials, args.tracking_uri, args.output_root, args.device)
    except (ConfigError, StorageError, slurm.LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        return tracking.exit_on_environment_error(exc, tracking.tracking_uri(args.tracking_uri))
    print_study_summary(spec, study, storage)
    print_next_steps(spec, study, args, storage)
    return 0
