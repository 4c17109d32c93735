"""Optuna studies end to end on CPU: a tiny study on synthetic data, scratch SQLite stores."""
import inspect
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
import yaml

from helpers import REPO, store_client, write_study
from segtricks.config.schema import ConfigError, config_from_dict
from segtricks.config import study as study_module
from segtricks.config.study import PRUNERS, SAMPLERS, load_study
from segtricks.engine.hooks import Pruning
from segtricks.runners.study_runner import tune
from segtricks.tune import main



@pytest.mark.slow
def test_study_end_to_end_resume_and_best_export(in_tmp, capsys):
    path = write_study(in_tmp)
    assert main(["--study", str(path)]) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_tmp / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    # the next steps, as ablate prints them: the best parameters, more trials, the runs in the MLflow UI
    out = capsys.readouterr().out
    next_steps = out[out.index("Next:"):].splitlines()[1:]
    exp_id = store_client(in_tmp).get_experiment_by_name("study-tiny").experiment_id
    assert next_steps == [
        f"  python -m segtricks.tune --study {path} --best   # as --set flags / a grid's set: block",
        f"  python -m segtricks.tune --study {path} --n-trials 4   # 2 more trials",
        f"  mlflow ui --backend-store-uri sqlite:///{in_tmp / 'mlflow.db'}   then open "
        f"http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning"]
    client = store_client(in_tmp)
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


@pytest.mark.slow
def test_pruned_trial_is_recorded_as_pruned(in_tmp):
    path = write_study(in_tmp, name="prune", pruner="{name: threshold, lower: 2.0}")  # IoU < 2 always
    assert main(["--study", str(path)]) == 0
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{in_tmp / 'optuna.db'}")
    assert {t.state.name for t in study.trials} == {"PRUNED"}
    client = store_client(in_tmp)
    exp = client.get_experiment_by_name("study-prune")
    trials = [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags]
    assert trials and all(r.data.tags["pruned"] == "true" for r in trials)
    assert all(len(client.get_metric_history(r.info.run_id, "train.loss")) == 1 for r in trials)  # stopped early


@pytest.mark.slow
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


@pytest.mark.slow
def test_trial_of_a_killed_worker_is_failed_and_retried(in_tmp, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_study(in_tmp, name="killed", n_trials=1)
    path.write_text(path.read_text().replace("optim.epochs: 2", "optim.epochs: 6"))  # long enough to kill
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
    spec = load_study(str(path))  # the same config: the retry resumes the killed trial's training
    study = tune(spec, storage, n_trials=1)
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and "COMPLETE" in states[1:]  # detected, failed, and its parameters retried
    retried = [t for t in study.trials[1:] if t.state.name == "COMPLETE"][0]
    assert retried.params == study.trials[0].params
    # issue 11 defect 8: no MLflow run is left RUNNING, the killed trial's nor the study's
    client = store_client(in_tmp)
    exp = client.get_experiment_by_name("study-killed")
    by_trial = {r.data.tags.get("trial"): r for r in client.search_runs([exp.experiment_id])}
    assert by_trial["0"].info.status == "FAILED"
    assert by_trial[None].info.status == "FINISHED"  # the study's parent run
    assert all(r.info.status != "RUNNING" for r in by_trial.values())


@pytest.mark.slow
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


# sampler (line 10) and pruner (line 9) of write_study's file
@pytest.mark.parametrize("sampler,pruner,line", [
    ("{name: cmaes2, seed: 0}", "{name: none}",
     ":10: sampler 'cmaes2' is unknown; valid samplers: cmaes, gp, qmc, random, tpe"),
    ("{name: tpee}", "{name: none}", ":10: sampler 'tpee' is unknown; valid samplers: cmaes, gp, qmc, random, tpe"),
    ("{name: tpe}", "{name: medain}", ":9: pruner 'medain' is unknown; valid pruners: hyperband, median, none, "
                                      "percentile, successive_halving, threshold"),
    ("{name: random, sed: 0}", "{name: none}", ":10: sampler 'random' has no argument 'sed'; valid: seed"),
    ("{name: tpe}", "{name: median, n_warmup: 1}", ":9: pruner 'median' has no argument 'n_warmup'; valid: "
                                                   "interval_steps, n_min_trials, n_startup_trials, n_warmup_steps"),
    ("{name: tpe}", "{name: none, n_warmup_steps: 0}",
     ":9: pruner 'none' has no argument 'n_warmup_steps'; it takes none"),
    ("{name: qmc, qmc_type: sobel}", "{name: none}",
     ":10: sampler 'qmc': qmc_type must be 'sobol' or 'halton', got 'sobel'"),
    ("{name: tpe, seed: '0'}", "{name: none}", ":10: sampler 'tpe': seed must be an integer, got '0'"),
    ("{name: tpe}", "{name: percentile}", ":9: pruner 'percentile' needs percentile (a number)"),
    ("{name: tpe}", "{name: percentile, percentile: 150}",  # Optuna's own range check
     ":9: pruner 'percentile': Percentile must be between 0 and 100 inclusive, but got percentile=150."),
    ("tpe", "{name: none}", ":10: sampler must be a mapping with a name, e.g. {name: tpe}; got 'tpe'"),
])
def test_a_bad_sampler_or_pruner_is_refused_before_any_storage(in_tmp, capsys, sampler, pruner, line):
    """Issue: anything but random ran TPE, any unknown pruner the median pruner."""
    path = write_study(in_tmp, sampler=sampler, pruner=pruner)
    assert main(["--study", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {path}{line}"]
    assert not (in_tmp / "optuna.db").exists() and not (in_tmp / "mlflow.db").exists()


def test_a_sampler_typo_is_refused_without_importing_torch(in_tmp):
    path = write_study(in_tmp, sampler="{name: cmaes2}")
    code = ("import sys; from segtricks.tune import main; rc = main(['--study', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {path}:10: sampler 'cmaes2' is unknown; "
                                        f"valid samplers: cmaes, gp, qmc, random, tpe"]


def test_cmaes_without_its_package_says_how_to_install_it(in_tmp, capsys, monkeypatch):
    real = study_module.importlib.util.find_spec
    monkeypatch.setattr(study_module.importlib.util, "find_spec", lambda n: None if n == "cmaes" else real(n))
    path = write_study(in_tmp, sampler="{name: cmaes, seed: 0}")
    assert main(["--study", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {path}:10: sampler 'cmaes' needs the cmaes package, which is not installed: pip install cmaes"]


SAMPLER_CASES = {"tpe": "{name: tpe, seed: 1, n_startup_trials: 2, multivariate: true}", "random": "{name: random}",
                 "cmaes": "{name: cmaes, seed: 1, popsize: 6}", "qmc": "{name: qmc, qmc_type: halton, scramble: true}",
                 "gp": "{name: gp, seed: 1, n_startup_trials: 3}"}
PRUNER_CASES = {"median": "{name: median, n_startup_trials: 2, n_warmup_steps: 0}",
                "percentile": "{name: percentile, percentile: 25.0}",
                "successive_halving": "{name: successive_halving, min_resource: auto, reduction_factor: 2}",
                "hyperband": "{name: hyperband, min_resource: 1, max_resource: 4}",
                "threshold": "{name: threshold, lower: 0.1}",
                "none": "{name: none}"}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_builds_its_optuna_class(in_tmp, monkeypatch, name):
    real = study_module.importlib.util.find_spec  # CmaEsSampler imports cmaes only when it samples
    monkeypatch.setattr(study_module.importlib.util, "find_spec", lambda n: object() if n == "cmaes" else real(n))
    spec = load_study(str(write_study(in_tmp, sampler=SAMPLER_CASES[name])))
    assert type(spec.make_sampler()) is getattr(optuna.samplers, SAMPLERS[name].cls)


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_each_pruner_builds_its_optuna_class(in_tmp, name):
    spec = load_study(str(write_study(in_tmp, pruner=PRUNER_CASES[name])))
    assert type(spec.make_pruner()) is getattr(optuna.pruners, PRUNERS[name].cls)


def test_the_arguments_a_study_may_set_are_the_optuna_constructors():
    """The tables are written out (read without Optuna state); an Optuna upgrade renaming one fails here."""
    for module, table in ((optuna.samplers, SAMPLERS), (optuna.pruners, PRUNERS)):
        for name, component in table.items():
            accepted = set(inspect.signature(getattr(module, component.cls)).parameters)
            assert set(component.args) <= accepted, (name, set(component.args) - accepted)


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "gp"])
def test_every_sampler_continues_a_study_with_new_points(in_tmp, name):
    """Issue 11 defect 7 for every sampler: a continued study must not replay its first trials. QMC
    keeps its place in the sequence in the storage: it continues with the points an uninterrupted
    study would have sampled, so its seed stays the study's."""
    sampler = {"qmc": "{name: qmc, seed: 0, scramble: true}"}.get(name, f"{{name: {name}, seed: 0}}")
    spec = load_study(str(write_study(in_tmp, sampler=sampler)))

    def run(parts):
        study = optuna.create_study(direction="maximize")
        for n in parts:
            study.sampler = spec.make_sampler(len(study.trials))
            study.optimize(lambda t: sum(float(v) for v in spec.suggest(t).values()), n_trials=n)
        return [t.params for t in study.trials]

    continued = run([2, 2])
    assert not any(p in continued[:2] for p in continued[2:])
    if name == "qmc":
        assert continued == run([4])


def test_the_last_epoch_is_reported_but_never_pruned():
    """Issue: a trial pruned after its last epoch had trained fully, and was then discarded."""
    reported = []
    trial = SimpleNamespace(report=lambda value, step: reported.append(step), should_prune=lambda: True)
    hook = Pruning(trial)
    state = SimpleNamespace(cfg=SimpleNamespace(optim=SimpleNamespace(epochs=2)), epoch=1)
    hook.after_epoch(state, {"val.iou": 0.5})  # the last epoch: the training is complete
    assert reported == [1]
    state.epoch = 0
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        hook.after_epoch(state, {"val.iou": 0.5})


def test_the_demo_studys_pruner_can_stop_a_trial_before_its_last_epoch():
    """Issue: with 2 epochs (steps 0, 1) and n_warmup_steps 1 the demo's pruner could only fire after
    the last epoch, when nothing is saved by stopping."""
    spec = load_study("demo")
    assert spec.pruner["name"] == "median"
    assert spec.pruner["n_warmup_steps"] < spec.config({}).optim.epochs - 1


@pytest.mark.parametrize("flag,value,line", [
    ("--workers", "0", "error: --workers 0: the number of Slurm array tasks must be at least 1"),
    ("--workers", "-3", "error: --workers -3: the number of Slurm array tasks must be at least 1"),
    ("--n-trials", "0", "error: --n-trials 0: a study's total must be at least 1"),
])
def test_a_count_below_one_is_refused(in_tmp, capsys, flag, value, line):
    """Issue: --workers 0 and --workers -3 were accepted and ran as 1."""
    assert main(["--study", "demo", flag, value]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert not (in_tmp / "optuna.db").exists()


def test_estimate_prices_one_trial_and_the_study_and_runs_nothing(in_tmp, capsys):
    path = write_study(in_tmp, n_trials=5)
    before = sorted(p.name for p in in_tmp.iterdir())
    assert main(["--study", str(path), "--estimate", "--estimate-steps", "1"]) == 0
    out = capsys.readouterr().out
    trial = next(line.split() for line in out.splitlines() if line.strip().startswith("one trial"))
    assert trial[2] == "train+evaluate" and "checkpoints" in trial
    assert "study tiny: up to 5 trials × " in out and "synthetic/val: 4 images" in out
    assert sorted(p.name for p in in_tmp.iterdir()) == before  # no storage, store or output folder


def test_a_study_continued_under_another_config_is_refused(in_tmp, capsys):
    """Issue 28 defect 1: a continuation under other --set flags mixed two training configs' trials in one
    study and one --best."""
    from segtricks.runners.study_runner import BASE_CONFIG_HASH, check_base_config, open_study
    from segtricks.config.schema import config_hash
    path = write_study(in_tmp)
    storage = f"sqlite:///{in_tmp / 'optuna.db'}"
    spec = load_study(str(path), ["optim.steps_per_epoch=2"])
    study = open_study(spec, storage)
    check_base_config(study, spec)  # what the first invocation records before its first trial
    assert study.user_attrs[BASE_CONFIG_HASH] == config_hash(spec.config({}))
    assert main(["--study", str(path), "--n-trials", "5", "--set", "optim.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study 'tiny' optimises another config than this command's (optim.epochs: 2 in "
                          "the study, 1 now); continue it with the flags it ran with, or start a new study with "
                          "--study-name tiny-2") and err.count("\n") == 1
    assert not optuna.load_study(study_name="tiny", storage=storage).trials  # refused before any trial
    # what changes no number (the loader's processes) and a parameter's base value continue the study
    check_base_config(open_study(spec, storage), load_study(str(path), ["data.num_workers=0", "gf.radius=3"]))
    renamed = load_study(str(path), ["optim.epochs=1"], study_name="tiny-2")
    assert renamed.name == "tiny-2"
    check_base_config(open_study(renamed, storage), renamed)  # a new study of its own
