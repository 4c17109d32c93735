"""Optuna studies end to end on CPU: a tiny study on synthetic data, scratch SQLite stores."""
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from segtricks.config import ConfigError, config_from_dict
from segtricks.study import load_study
from segtricks.study_runner import tune
from segtricks.tune import main

REPO = Path(__file__).resolve().parents[1]


def write_study(tmp_path, name="tiny", pruner="{name: none}", space=None, **extra):
    space = space or {"crop.eq_weight": "{type: float, low: 1.0e-3, high: 1.0e-1, log: true}",
                      "gf.radius": "{type: int, low: 1, high: 6}"}
    lines = [f"name: {name}", f"base: {REPO / 'experiments' / 'demo_cell.yaml'}",
             "set: {optim.epochs: 2, optim.steps_per_epoch: 2, optim.batch_size: 4, data.train.limit: 8,",
             "      tricks: [crop, gf]}",
             "objective: {dataset: {name: synthetic, split: val, limit: 4}, metric: iou, direction: maximize}",
             "search_space:"] + [f"  {k}: {v}" for k, v in space.items()]
    lines += [f"pruner: {pruner}", "sampler: {name: random, seed: 0}", f"n_trials: {extra.get('n_trials', 2)}"]
    path = tmp_path / f"study_{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_study_end_to_end_resume_and_best_export(in_tmp, capsys):
    path = write_study(in_tmp)
    assert main(["--study", str(path)]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_tmp / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("study-tiny")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("role") == "study"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(trials) == 2
    assert all("objective.iou" in r.data.metrics and "gf.radius" in r.data.params for r in trials)
    assert "best_value" in parent[0].data.metrics
    plots = {a.path for a in client.list_artifacts(parent[0].info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots
    capsys.readouterr()
    # rerunning continues the study up to its total, not n_trials more
    assert main(["--study", str(path), "--n-trials", "3"]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_tmp / 'optuna.db'}").trials) == 3
    assert main(["--study", str(path), "--n-trials", "3"]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_tmp / 'optuna.db'}").trials) == 3
    capsys.readouterr()
    # --best prints an override that a config (and so ablate --set / a grid's set:) accepts
    assert main(["--study", str(path), "--best"]) == 0
    best = yaml.safe_load(capsys.readouterr().out)["set"]
    assert set(best) == {"crop.eq_weight", "gf.radius"}
    data = {}
    for key, value in best.items():
        head, leaf = key.split(".")
        data.setdefault(head, {})[leaf] = value
    assert config_from_dict(data).gf.radius == best["gf.radius"]


def test_pruned_trial_is_recorded_as_pruned(in_tmp):
    path = write_study(in_tmp, name="prune", pruner="{name: threshold, lower: 2.0}")  # IoU < 2 always
    assert main(["--study", str(path)]) == 0
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{in_tmp / 'optuna.db'}")
    assert {t.state.name for t in study.trials} == {"PRUNED"}
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("study-prune")
    trials = [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags]
    assert trials and all(r.data.tags["pruned"] == "true" for r in trials)
    assert all(len(client.get_metric_history(r.info.run_id, "train.loss")) == 1 for r in trials)  # stopped early


def test_gf_only_trial_reuses_the_training(in_tmp):
    spec = load_study(str(write_study(in_tmp, name="reuse")))
    first = {"crop.eq_weight": 0.01, "gf.radius": 2}
    study = tune(spec, f"sqlite:///{in_tmp / 'optuna.db'}", n_trials=2, enqueue=[first, {**first, "gf.radius": 5}])
    a, b = study.trials
    assert a.params["gf.radius"] == 2 and b.params["gf.radius"] == 5
    assert a.user_attrs["trained"] is True and b.user_attrs["trained"] is False
    assert a.user_attrs["training_hash"] == b.user_attrs["training_hash"]


@pytest.mark.parametrize("space,match", [
    ({"gf.radius": "{type: int, low: 9, high: 2}"}, "empty or inverted range"),
    ({"crop.eq_weight": "{type: float, low: 0.0, high: 0.1, log: true}"}, "log-scale range must be positive"),
    ({"gf.radiuss": "{type: int, low: 1, high: 3}"}, r"search_space.gf.radiuss is not a valid config key"),
])
def test_bad_search_space_is_a_clear_error(in_tmp, space, match):
    with pytest.raises(ConfigError, match=match):
        load_study(str(write_study(in_tmp, space=space)))


def test_test_split_objective_and_unreachable_storage_are_refused(in_tmp, capsys):
    path = write_study(in_tmp)
    path.write_text(path.read_text().replace("split: val", "split: test"))
    with pytest.raises(ConfigError, match="is a test set"):
        load_study(str(path))
    good = write_study(in_tmp, name="ok")
    assert main(["--study", str(good), "--storage", "sqlite:////nonexistent/dir/optuna.db"]) == 2
    assert "cannot open study storage sqlite:////nonexistent/dir/optuna.db" in capsys.readouterr().err


def test_trial_of_a_killed_worker_is_failed_and_retried(in_tmp, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_study(in_tmp, name="killed", n_trials=1)
    path.write_text(path.read_text().replace("optim.epochs: 2", "optim.epochs: 30"))  # long enough to kill
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEGTRICKS_OFFLINE": "1", "SEGTRICKS_OPTUNA_HEARTBEAT_S": "1"}
    storage = f"sqlite:///{in_tmp / 'optuna.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "segtricks.tune", "--study", str(path), "--storage", storage],
                            cwd=in_tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not list(in_tmp.glob("outputs/trainings/*/last.pt")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the trial is left RUNNING
    proc.wait()
    study = optuna.load_study(study_name="killed", storage=storage)
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    time.sleep(4.5)  # its heartbeat goes stale (grace 2 s; SQLite's clock has 1 s resolution)
    monkeypatch.setenv("SEGTRICKS_OPTUNA_HEARTBEAT_S", "1")
    spec = load_study(str(path), ["optim.epochs=1"])
    study = tune(spec, storage, n_trials=1)
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and "COMPLETE" in states[1:]  # detected, failed, and its parameters retried
    retried = [t for t in study.trials[1:] if t.state.name == "COMPLETE"][0]
    assert retried.params == study.trials[0].params
    # issue 11 defect 8: no MLflow run is left RUNNING, the killed trial's nor the study's
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("study-killed")
    by_trial = {r.data.tags.get("trial"): r for r in client.search_runs([exp.experiment_id])}
    assert by_trial["0"].info.status == "FAILED"
    assert by_trial[None].info.status == "FINISHED"  # the study's parent run
    assert all(r.info.status != "RUNNING" for r in by_trial.values())


def test_a_continued_study_proposes_new_points(in_tmp):
    """Issue 11 defect 7: each invocation seeded the sampler alike, so a continuation replayed trial k."""
    space = {"gf.radius": "{type: int, low: 1, high: 40}", "gf.eps": "{type: float, low: 1.0e-6, high: 1.0, log: true}"}
    path = write_study(in_tmp, name="cont", space=space)  # post-processing only: one shared training
    assert main(["--study", str(path), "--n-trials", "2"]) == 0
    assert main(["--study", str(path), "--n-trials", "4"]) == 0
    trials = optuna.load_study(study_name="cont", storage=f"sqlite:///{in_tmp / 'optuna.db'}").trials
    first, continued = [t.params for t in trials[:2]], [t.params for t in trials[2:]]
    assert len(continued) == 2 and not any(p in first for p in continued)


def test_a_study_missing_weights_is_refused_before_any_trial_or_run(in_tmp, capsys):
    path = write_study(in_tmp)
    assert main(["--study", str(path), "--set", f"backbone.weights={in_tmp / 'nope.pth'}"]) == 2
    assert f"weights file {in_tmp / 'nope.pth'} does not exist" in capsys.readouterr().err
    assert not (in_tmp / "optuna.db").exists() and not (in_tmp / "mlflow.db").exists()
