"""Grids and studies on a real single-node Slurm cluster, through sbatch (no mock).

`.ci/run` starts one with `.ci/slurm.sh` (Debian's slurmctld/slurmd/munge, one node, two stand-in
GPUs); elsewhere these tests skip, saying so. Assertions use MLflow run states and `squeue`, not
`sacct` (there is no accounting database).
"""
import shutil
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import unreadable_folder
from segtricks import checkpoint
from segtricks.ablate import main as ablate
from segtricks.tune import main as tune
from test_tune import write_study


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


pytestmark = pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster here (sinfo/sbatch absent or no idle "
                                                        "node): .ci/slurm.sh starts a one-node cluster")
REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "optim.steps_per_epoch=2", "--set", "optim.batch_size=4", "--set", "data.train.limit=8",
        "--set", "data.val.limit=4", "--set", "eval=[{name: synthetic, split: test, limit: 4}]"]
SLURM = ["--launcher", "slurm", "--cpus-per-task", "1", "--time", "15"]


def write_grid(tmp_path, entries, epochs=1):
    lines = ["name: sl", f"base: {REPO / 'experiments' / 'demo_cell.yaml'}", f"set: {{optim.epochs: {epochs}}}",
             "axes:", "  tricks:"] + [f"    - {e}" for e in entries]
    path = tmp_path / "sl.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sl")
    return client, {r.data.tags["cell"]: r for r in client.search_runs([exp.experiment_id])}


def test_two_group_grid_finishes_every_cell_once_with_one_gpu_per_task(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}",
                               "{name: crop, set: {tricks: [crop]}}"])
    start = time.time()
    assert ablate(["--grid", str(grid), *TINY, *SLURM, "--wait"]) == 0
    out = capsys.readouterr().out
    print(f"tiny two-group grid: submit to all FINISHED in {time.time() - start:.0f} s")
    assert "submitted 2 Slurm array task(s)" in out and "3 cells: 3 finished, 0 not" in out
    client, by_cell = runs(in_tmp)
    assert len(client.search_runs([by_cell["base"].info.experiment_id])) == 3  # exactly once each
    assert all(r.info.status == "FINISHED" for r in by_cell.values())
    assert by_cell["base"].data.tags["role"] == "train" and by_cell["crop"].data.tags["role"] == "train"
    assert by_cell["gf"].data.tags["model_from_run"] == by_cell["base"].info.run_id
    jobs = {r.data.tags["slurm_job"] for r in by_cell.values()}
    assert len(jobs) == 2 and by_cell["base"].data.tags["slurm_job"] == by_cell["gf"].data.tags["slurm_job"]
    gpus = {c: r.data.tags["cuda_visible_devices"] for c, r in by_cell.items()}
    assert set(gpus.values()) <= {"0", "1"}  # one stand-in GPU each (--gres=gpu:1)
    a, b = by_cell["base"].info, by_cell["crop"].info
    if a.start_time < b.end_time and b.start_time < a.end_time:  # the two tasks ran at the same time
        assert gpus["base"] != gpus["crop"]
    # a plain rerun submits nothing
    assert ablate(["--grid", str(grid), *TINY, *SLURM, "--wait"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


def _queued() -> set:
    return set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())


def test_a_preempted_task_is_requeued_and_finishes_without_training_an_epoch_twice(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"], epochs=4)
    assert ablate(["--grid", str(grid), *TINY, *SLURM]) == 0  # submit and return
    job = next(line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip().endswith("only"))
    deadline = time.time() + 300
    while time.time() < deadline and not list(in_tmp.glob("outputs/trainings/*/last.pt")):
        time.sleep(0.5)
    (last,) = in_tmp.glob("outputs/trainings/*/last.pt")
    # preemption as submitit's Job._interrupt sends it: SIGTERM, then the USR2 that triggers checkpoint()
    subprocess.run(["scancel", job, "--signal", "SIGTERM"], check=True)
    subprocess.run(["scancel", job, "--signal", "USR2"], check=True)
    signalled = time.time()
    released = False
    while time.time() < deadline and job in _queued():
        state = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%t %r"], capture_output=True,
                               text=True).stdout.split()
        if not released and state[:2] == ["PD", "BeginTime"]:
            # Slurm holds a requeued job for about two minutes (measured 148 s from signal to finish
            # with the hold); make it eligible now, so the test measures our resume, not the hold
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            released = True
        time.sleep(1)
    print(f"preempted task {job}: requeued and finished {time.time() - signalled:.0f} s after the signal")
    assert job not in _queued()
    log = (in_tmp / "outputs" / "slurm").rglob(f"{job}_0_log.err")
    assert any("requeu" in p.read_text().lower() for p in log), "the task was not requeued"
    client, by_cell = runs(in_tmp)
    run = by_cell["only"]
    assert run.info.status == "FINISHED" and len(by_cell) == 1
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train.loss"))
    assert steps == [0, 1, 2, 3]  # every epoch logged once: none trained twice, none lost
    assert checkpoint.load(last)["epoch"] == 3


def test_a_failing_cell_is_failed_while_the_other_group_finishes(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: ok, set: {tricks: []}}",
                               "{name: broken, set: {tricks: [crop], eval: [{name: folder, root: %s}]}}" %
                               unreadable_folder(in_tmp)])
    assert ablate(["--grid", str(grid), *TINY[:-2], *SLURM, "--wait"]) == 1
    client, by_cell = runs(in_tmp)
    assert by_cell["ok"].info.status == "FINISHED" and by_cell["broken"].info.status == "FAILED"
    tb = client.download_artifacts(by_cell["broken"].info.run_id, "traceback.txt", str(in_tmp))
    assert "DatasetError" in Path(tb).read_text()


def test_a_study_with_two_array_tasks_finishes_the_requested_trials(in_tmp, capsys):
    path = write_study(in_tmp, name="slurm_study", n_trials=4)
    storage = f"journal:{in_tmp / 'study.log'}"
    assert tune(["--study", str(path), "--storage", storage, "--workers", "2", *SLURM, "--wait"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 Slurm array task(s)" in out
    study = optuna.load_study(study_name="slurm_study", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(in_tmp / "study.log"))))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 4 and len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)


def test_bad_slurm_input_is_refused_before_anything_is_submitted(in_tmp, capsys, monkeypatch):
    grid = write_grid(in_tmp, ["{name: a, set: {tricks: []}}"])
    before = _queued()
    assert ablate(["--grid", str(grid), *SLURM, "--partition", "nosuch"]) == 2
    assert "--partition nosuch: unknown partition; sinfo lists: debug" in capsys.readouterr().err
    assert ablate(["--grid", str(grid), *SLURM, "--slurm-arg", "colour=blue"]) == 2
    assert "--slurm-arg: unknown key(s) colour" in capsys.readouterr().err
    from segtricks import slurm
    monkeypatch.setattr(slurm, "cluster_nodes", lambda: ["gpu-node1", "gpu-node2"])  # a real cluster
    assert ablate(["--grid", str(grid), *SLURM]) == 2
    err = capsys.readouterr().err
    assert f"MLflow store {in_tmp / 'mlflow.db'} is on a" in err and "cannot reach" in err and "PostgreSQL" in err
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ablate(["--grid", str(grid), *SLURM]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err
    monkeypatch.undo()  # PATH back (and the working folder: nothing below needs it)
    assert _queued() == before
