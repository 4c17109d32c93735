"""The ablation runner end to end on CPU: a reduced demo grid, in a scratch tracking store."""
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import DEMO_CELL, REPO, TINY_FLAGS, grid_runs, unreadable_folder, write_grid
from segtricks import files
from segtricks.engine import checkpoint
from segtricks.ablate import main
from segtricks.config.schema import ConfigError
from segtricks.runners.plan import load_grid



def runs(tmp_path, grid="mini"):
    return grid_runs(tmp_path, grid)


@pytest.mark.slow
def test_demo_grid_runs_tags_metrics_and_rerun_creates_nothing(in_tmp, capsys):
    assert main(["--grid", "demo", "--set", "optim.epochs=1", *TINY_FLAGS]) == 0
    client, rs = runs(in_tmp, "demo")
    assert len(rs) == 4 and all(r.info.status == "FINISHED" for r in rs)
    by_cell = {r.data.tags["cell"]: r for r in rs}
    assert set(by_cell) == {"demo_vit4/baseline", "demo_vit4/crop", "demo_vit4/gf", "demo_vit4/crop+gf"}
    base = by_cell["demo_vit4/baseline"]
    tags = base.data.tags
    assert tags["grid"] == "demo" and tags["backbone"] == "demo_vit4" and tags["weights"] == "random-init"
    assert len(tags["config_hash"]) == 64 and tags["role"] == "train"
    assert by_cell["demo_vit4/gf"].data.tags["model_from_run"] == base.info.run_id  # train once, evaluate many
    assert "role" not in by_cell["demo_vit4/gf"].data.tags
    for key in ("synthetic.iou", "synthetic.acc", "synthetic.max_fbeta", "synthetic.corloc", "train.loss"):
        assert key in base.data.metrics, key
    assert "train.crop_eq" in by_cell["demo_vit4/crop"].data.metrics
    assert base.data.params["backbone.name"] == "demo_vit4"
    arts = {a.path for a in client.list_artifacts(base.info.run_id)}
    assert {"config.yaml", "environment.json", "predictions_synthetic.png", "records"} <= arts
    out = capsys.readouterr().out
    assert "4 cells: 4 run, 0 skipped, 0 failed" in out
    # rerunning a finished grid does no work and creates no runs
    assert main(["--grid", "demo", "--set", "optim.epochs=1", *TINY_FLAGS]) == 0
    assert len(runs(in_tmp, "demo")[1]) == 4
    out = capsys.readouterr().out
    assert "4 cells: 0 run, 4 skipped, 0 failed" in out
    skipped_row = next(line for line in out.splitlines() if line.strip().startswith("demo_vit4/baseline"))
    assert f"{base.data.metrics['synthetic.iou']:.3f}" in skipped_row  # a skipped cell shows its result
    assert "python -m analysis.make_tables --grid demo" in out
    assert f"http://127.0.0.1:5000/#/experiments/{base.info.experiment_id}" in out


@pytest.mark.slow
def test_two_seeds_give_two_runs_per_cell_tagged_with_their_seed_and_a_rerun_skips_all(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}"])
    grid.write_text(grid.read_text() + "seeds: [0, 1]\n")
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    client, rs = runs(in_tmp)
    assert sorted((r.data.tags["cell"], r.data.tags["seed"], r.data.params["seed"], r.info.run_name) for r in rs) == [
        ("base", "0", "0", "base"), ("base", "1", "1", "base"), ("gf", "0", "0", "gf"), ("gf", "1", "1", "gf")]
    assert all(r.info.status == "FINISHED" for r in rs) and len({r.data.tags["config_hash"] for r in rs}) == 4
    run_of = {(r.data.tags["cell"], r.data.tags["seed"]): r for r in rs}
    for seed in ("0", "1"):  # each seed trains once; its gf evaluates that seed's model
        assert run_of["base", seed].data.tags["role"] == "train"
        assert run_of["gf", seed].data.tags["model_from_run"] == run_of["base", seed].info.run_id
    out = capsys.readouterr().out
    assert "4 runs (2 cells × 2 seeds): 4 run, 0 skipped, 0 failed" in out
    summary = out.split("summary of grid mini:")[1].splitlines()
    assert summary[1].split()[:2] == ["cell", "seed"] and summary[2].split()[:3] == ["base", "0", "FINISHED"]
    assert summary[3].split()[:2] == ["1", "FINISHED"]  # the cell's name once, a line per seed
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    assert len(runs(in_tmp)[1]) == 4
    assert "4 runs (2 cells × 2 seeds): 0 run, 4 skipped, 0 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_failed_cell_is_recorded_and_the_grid_goes_on(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: ok, set: {tricks: []}}",
                               "{name: broken, set: {tricks: [gf], eval: [{name: folder, root: %s}]}}" %
                               unreadable_folder(in_tmp)])
    assert main(["--grid", str(grid), *TINY_FLAGS[:-2]]) == 1
    client, rs = runs(in_tmp)
    status = {r.data.tags["cell"]: r for r in rs}
    assert status["ok"].info.status == "FINISHED" and status["broken"].info.status == "FAILED"
    tb = client.download_artifacts(status["broken"].info.run_id, "traceback.txt", str(in_tmp))
    assert "DatasetError" in Path(tb).read_text()
    assert "1 failed" in capsys.readouterr().out
    # --rerun-failed touches only the failed cell (and it fails again, still recorded)
    assert main(["--grid", str(grid), "--rerun-failed", *TINY_FLAGS[:-2]]) == 1
    rs = runs(in_tmp)[1]
    assert sum(r.data.tags["cell"] == "ok" for r in rs) == 1 and sum(r.data.tags["cell"] == "broken" for r in rs) == 2


def test_missing_weights_and_data_are_listed_at_once_and_no_run_is_created(in_tmp, capsys):
    """Issue 14: the preflight check names every missing file and folder before any run exists."""
    grid = write_grid(in_tmp, [f"{{name: a, set: {{backbone.weights: {in_tmp / 'nope.pth'}}}}}",
                               f"{{name: b, set: {{eval: [{{name: folder, root: {in_tmp / 'no_data'}}}]}}}}"])
    assert main(["--grid", str(grid), *TINY_FLAGS[:-2]]) == 2
    err = capsys.readouterr().err
    assert "2 thing(s) the cells need are missing; nothing was run" in err
    assert f"weights file {in_tmp / 'nope.pth'} does not exist" in err and f"{in_tmp / 'no_data'}" in err
    assert not runs(in_tmp)[1]
    assert main(["--grid", str(grid), *TINY_FLAGS[:-2], "--dry-run"]) == 0  # the same, as a column
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "will fail: missing weights of demo_vit4" in rows["a"]
    assert "will fail: missing dataset folder" in rows["b"]
    assert not runs(in_tmp)[1]


def test_bad_grid_input_fails_before_anything_runs(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: a, set: {optim.lrr: 1}}"])
    assert main(["--grid", str(grid)]) == 2
    assert "mini.yaml" in capsys.readouterr().err
    grid = write_grid(in_tmp, ["{name: a, set: {tricks: [sharpen]}}"])
    with pytest.raises(ConfigError, match=r"mini.yaml \(cell a\): unknown trick 'sharpen'"):
        load_grid(str(grid))
    bad = in_tmp / "bad.yaml"
    bad.write_text("name: bad\naxes:\n  tricks:\n    - {name: a, sett: {}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: axis 'tricks' entry 0"):
        load_grid(str(bad))
    with pytest.raises(ConfigError, match="unknown grid 'tabel3'; grids in .*: demo, (.*, )?table1"):
        load_grid("tabel3")
    with pytest.raises(ConfigError, match=r"^--set backbone.name=dino_vitz: unknown backbone 'dino_vitz'"):
        load_grid("demo", ["backbone.name=dino_vitz"])  # the flag that set the name is blamed
    assert not (in_tmp / "mlflow.db").exists() or not runs(in_tmp)[1]


def test_dry_run_shows_the_plan(in_tmp, capsys):
    assert main(["--grid", "table3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 cells, 6 trainings" in out
    assert out.count("train+evaluate") == 6 and "model of dino_s8/crop" in out


DEMO_HASHES = {  # (config hash, training hash) of each demo cell, as every store holds them (before seeds existed)
    "demo_vit4/baseline": ("771cea594c19fe9129975ad686672dc90a1e62d513f641fa54b975843c532c1a",
                           "ae39d35f93af569b075a45d0b4780788139f71690e00cbe9d65b9c48a2e379db"),
    "demo_vit4/crop": ("b428e967b8e030a842d2d1c5c372203044a9056abe0116ac7b07ca9e7a82183e",
                       "7c78150f0d8be9072ccdd9a8c2b2234d996e7aea003fb0a6bc1b2097fbe131c2"),
    "demo_vit4/gf": ("9cdf345a969cb884bd6de1fe8315225d4dc6bbb84cb28d6ef286be545efbd8f7",
                     "ae39d35f93af569b075a45d0b4780788139f71690e00cbe9d65b9c48a2e379db"),
    "demo_vit4/crop+gf": ("796a9eff9e5eae46d745a7c43ef5561d7a98da0f15008e3d7a587a26b9ca4be1",
                          "7c78150f0d8be9072ccdd9a8c2b2234d996e7aea003fb0a6bc1b2097fbe131c2"),
}


def test_a_grid_without_seeds_keeps_its_cells_names_and_hashes():
    grid = load_grid("demo")
    assert grid.seeds == () and [c.seed for c in grid.cells] == [None] * 4
    assert {c.name: (c.config_hash, c.training_hash) for c in grid.cells} == DEMO_HASHES
    assert [c.id for c in grid.cells] == [c.name for c in grid.cells]


def test_seeds_replicate_cells_with_their_own_hashes_and_the_cells_names():
    grid = load_grid("demo", seeds=[0, 1, 2])
    assert grid.seeds == (0, 1, 2) and len(grid.cells) == 12
    assert [c.name for c in grid.cells] == [name for _ in range(3) for name in DEMO_HASHES]  # seed by seed
    assert grid.cells[5].id == "demo_vit4/crop @ seed 1" and grid.cells[5].cfg.seed == 1
    assert len({c.config_hash for c in grid.cells}) == 12 and len({c.training_hash for c in grid.cells}) == 6
    for c in grid.cells:  # post-processing shares its seed's training, and only that one
        sharing = {o.id for o in grid.cells if o.training_hash == c.training_hash}
        assert len(sharing) == 2 and all(o.endswith(f"@ seed {c.seed}") for o in sharing)
    # the seed the cells had anyway is the grid without seeds: its runs count as done
    assert {c.name: (c.config_hash, c.training_hash) for c in grid.cells if c.seed == 0} == DEMO_HASHES


def test_dry_run_groups_the_replicas_under_each_cell(in_tmp, capsys):
    assert main(["--grid", "table3", "--seeds", "0,1,2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "table3.yaml): 36 runs (12 cells × 3 seeds), 18 trainings" in lines[1]
    rows = lines[2:38]
    assert [row.split()[0] for row in rows[::3]] == ["dino_s8/baseline", "dino_s8/gf", "dino_s8/crop",
                                                     "dino_s8/crop+gf", "dino_s16/baseline", "dino_s16/gf",
                                                     "dino_s16/crop", "dino_s16/crop+gf", "ibot_s16/baseline",
                                                     "ibot_s16/gf", "ibot_s16/crop", "ibot_s16/crop+gf"]
    assert rows[0].split()[:3] == ["dino_s8/baseline", "seed", "0"]  # the name once, then a line per seed
    assert [row.split()[:2] for row in rows[1:3]] == [["seed", "1"], ["seed", "2"]]
    assert sum("train+evaluate" in row for row in rows) == 18 and "model of dino_s8/crop" in rows[10]


def test_dry_run_writes_nothing_and_reaches_no_network(in_tmp, tmp_path_factory, monkeypatch, capsys):
    """A dry run created mlflow.db and the grid's experiment, and downloaded the backbone weights."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.delenv("SEGTRICKS_OFFLINE")  # downloads allowed: the dry run must still not fetch
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    connects = []
    monkeypatch.setattr(socket.socket, "connect", lambda sock, addr: connects.append(addr) or 1 / 0)
    assert main(["--grid", "table3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "(no experiment 'table3' in sqlite:///" in out and out.count("train+evaluate") == 6
    assert ("  weights of dino_vits8: not on this machine; the run downloads it from https://dl.fbaipublicfiles.com/"
            f"dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth to {torch_home}/hub/checkpoints/"
            "dino_deitsmall8_pretrain.pth") in out.splitlines()
    assert list(in_tmp.iterdir()) == [] and list(torch_home.iterdir()) == [] and connects == []
    # a store that exists is read, and the grid's experiment is not created in it
    from segtricks.tracking.store import Store
    from segtricks.tracking.uri import tracking_uri
    Store().experiment("other")
    assert main(["--grid", "table3", "--dry-run"]) == 0
    assert sorted(e.name for e in MlflowClient(tracking_uri()).search_experiments()) == ["Default", "other"]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["mlflow.db", "mlflow.db.lock"] and connects == []


def test_an_output_root_that_cannot_be_written_is_refused_before_any_run(in_tmp, monkeypatch, capsys):
    """An --output-root that was a file crashed with NotADirectoryError; a read-only one failed every
    cell, each with a FAILED run."""
    from segtricks.tune import main as tune
    afile = in_tmp / "afile"
    afile.write_text("")
    cases = {str(afile): f"error: --output-root {afile}: is a file, not a folder; choose another --output-root",
             str(afile / "sub"): f"error: --output-root {afile / 'sub'}: cannot be created: {afile} is a file, "
                                 f"not a folder; choose another --output-root"}
    for root, line in cases.items():
        for command in (["--grid", "demo"], ["--grid", "demo", "--launcher", "slurm"],
                        ["--grid", "demo", "--dry-run"]):
            assert main([*command, "--output-root", root]) == 2
            assert capsys.readouterr().err.splitlines() == [line]
        assert tune(["--study", "demo", "--output-root", root]) == 2
        assert capsys.readouterr().err.splitlines() == [line]
    if Path("/sys/kernel").is_dir():  # sysfs refuses new files, to root too (permission bits would not tell)
        assert main(["--grid", "demo", "--output-root", "/sys/kernel/outputs"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --output-root /sys/kernel/outputs: cannot be created: /sys/kernel is not "
                              "writable (") and err.count("\n") == 1
    # a read-only mount, as the probe file's creation meets it (tests cannot mount one)
    monkeypatch.setattr("tempfile.mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    assert main(["--grid", "demo", "--output-root", str(in_tmp)]) == 2
    assert capsys.readouterr().err == (f"error: --output-root {in_tmp}: not writable (read-only filesystem); "
                                       f"choose another --output-root\n")
    assert [p.name for p in in_tmp.iterdir()] == ["afile"]  # no store, no run, no optuna.db, no outputs/


def _env(tmp_path):
    return {**os.environ, "SEGTRICKS_HEARTBEAT_S": "0.5", "SEGTRICKS_STALE_AFTER_S": "4",
            "PYTHONPATH": str(REPO), "SEGTRICKS_OFFLINE": "1"}


@pytest.mark.slow
def test_killed_training_resumes_in_the_same_run(in_tmp):
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"], epochs=3)
    cmd = [sys.executable, "-m", "segtricks.ablate", "--grid", str(grid), *TINY_FLAGS[:-2]]
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=_env(in_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = next(iter(in_tmp.glob("outputs/trainings/*")), None)
    deadline = time.time() + 240
    while time.time() < deadline:
        last = next(iter(in_tmp.glob("outputs/trainings/*/last.pt")), None)
        if last is not None:
            break
        time.sleep(0.2)
    assert last is not None, "training never wrote a checkpoint"
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 during the second epoch
    proc.wait()
    done_epoch = checkpoint.load(last)["epoch"]
    assert done_epoch < 2
    # no wait for the claim to go stale: the dead worker ran on this host, and its pid is gone
    env = {**_env(in_tmp), "SEGTRICKS_STALE_AFTER_S": "600"}
    assert subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, timeout=300).returncode == 0
    client, rs = runs(in_tmp)
    assert len(rs) == 1 and rs[0].info.status == "FINISHED"  # the same run, resumed
    steps = [m.step for m in client.get_metric_history(rs[0].info.run_id, "train.loss")]
    assert sorted(steps) == [0, 1, 2]  # every epoch logged once: none trained twice, none lost


@pytest.mark.slow
def test_two_concurrent_invocations_train_each_cell_once(in_tmp):
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}",
                               "{name: bf, set: {tricks: [bf]}}"])
    cmd = [sys.executable, "-m", "segtricks.ablate", "--grid", str(grid), *TINY_FLAGS[:-2], "--workers", "2"]
    env = {**_env(in_tmp), "CUDA_VISIBLE_DEVICES": "3,5"}  # two GPUs, as far as the workers are told
    result = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    client, rs = runs(in_tmp)
    assert sorted(r.data.tags["cell"] for r in rs) == ["base", "bf", "gf"]  # one run per cell
    assert all(r.info.status == "FINISHED" for r in rs)
    trainers = [r for r in rs if r.data.tags.get("role") == "train"]
    assert len(trainers) == 1  # three cells, one shared training, trained once
    assert len(client.get_metric_history(trainers[0].info.run_id, "train.loss")) == 1
    gpu_of = {r.data.tags["worker"]: r.data.tags["cuda_visible_devices"] for r in rs}
    assert set(gpu_of.values()) <= {"3", "5"} and len(set(gpu_of.values())) == len(gpu_of)  # one GPU each
    assert "3 cells: 3 run, 0 skipped, 0 failed" in result.stdout  # one summary, of both workers' cells


def test_local_workers_see_one_gpu_each_in_turn(monkeypatch):
    from segtricks.launchers import local
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # of the GPUs this process may use
    assert local.gpu_environments(3) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("2", "5", "2")]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(local.torch.cuda, "device_count", lambda: 1)
    assert local.gpu_environments(2) == [{}, {}]  # one GPU (or none): every worker sees what this process sees


def _wait_for_a_checkpoint(tmp_path, proc, timeout=300):
    """The RUNNING runs once one of them has a last.pt (its worker is in its training's later epochs)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        trained = {p.parent.name for p in tmp_path.glob("outputs/trainings/*/last.pt")}
        running = [r for r in runs(tmp_path)[1] if r.info.status == "RUNNING"] if trained else []
        if any(r.data.tags["training_hash"][:16] in trained for r in running):
            return running, trained
        time.sleep(0.2)
    raise AssertionError("no worker wrote a checkpoint")


def _each_epoch_logged_once(tmp_path, epochs):
    client, rs = runs(tmp_path)
    assert all(r.info.status == "FINISHED" for r in rs)
    for r in rs:
        if r.data.tags.get("role") == "train":
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train.loss")]
            assert sorted(steps) == list(range(epochs)), r.data.tags["cell"]  # none trained twice, none lost
    return rs


def two_worker_command(in_tmp):
    """``ablate --workers 2`` on a grid of two cells whose 3-epoch trainings can be killed mid-way."""
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: crop, set: {tricks: [crop]}}"], epochs=3)
    return [sys.executable, "-m", "segtricks.ablate", "--grid", str(grid), *TINY_FLAGS[:-2], "--workers", "2"]


@pytest.mark.slow
def test_a_killed_worker_of_two_is_taken_over_by_the_other(in_tmp):
    """``--workers 2``: kill -9 of the worker holding a training mid-way; the other worker resumes it."""
    cmd = two_worker_command(in_tmp)
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=_env(in_tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    running, trained = _wait_for_a_checkpoint(in_tmp, proc)
    victim = next(r for r in running if r.data.tags["training_hash"][:16] in trained)
    os.kill(int(victim.data.tags["worker"].rpartition(":")[2]), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]  # the grid is complete: the other worker resumed the cell
    assert "was killed by SIGKILL; the run it held is resumed by another worker" in err
    assert "2 cells: 2 run, 0 skipped, 0 failed" in out  # one summary, of both workers' cells
    rs = _each_epoch_logged_once(in_tmp, 3)
    assert sorted(r.data.tags["cell"] for r in rs) == ["base", "crop"]  # the killed run resumed in place
    assert next(r for r in rs if r.info.run_id == victim.info.run_id).data.tags["worker"] != victim.data.tags["worker"]


@pytest.mark.slow
def test_workers_of_a_killed_parent_finish_the_grid(in_tmp):
    cmd = two_worker_command(in_tmp)
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=_env(in_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_a_checkpoint(in_tmp, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only holds the workers' results: they go on without it
    proc.wait()
    deadline = time.time() + 300
    while time.time() < deadline and sorted(r.info.status for r in runs(in_tmp)[1]) != ["FINISHED", "FINISHED"]:
        time.sleep(1)
    rs = _each_epoch_logged_once(in_tmp, 3)
    assert sorted(r.data.tags["cell"] for r in rs) == ["base", "crop"]  # both cells ran (a timeout fails here)


@pytest.mark.slow
def test_ctrl_c_of_two_workers_leaves_a_grid_that_the_next_run_resumes(in_tmp):
    cmd = two_worker_command(in_tmp)
    # SIGINT handled as a terminal's Ctrl-C is: a shell's background job (nohup … &) ignores SIGINT and
    # passes that on, and the grid then ran to its end with exit status 0
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=_env(in_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_a_checkpoint(in_tmp, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the parent and its workers
    proc.wait(timeout=120)
    assert proc.returncode != 0
    left = {r.info.run_id for r in runs(in_tmp)[1]}
    interrupted = {r.info.run_id for r in runs(in_tmp)[1] if r.info.status == "KILLED"}
    assert interrupted and not any(r.info.status == "RUNNING" for r in runs(in_tmp)[1])  # issue 28: closed KILLED
    env = {**_env(in_tmp), "SEGTRICKS_STALE_AFTER_S": "600"}  # no wait: the interrupted workers are gone
    result = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    client, rs = runs(in_tmp)
    finished = [r for r in rs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["cell"] for r in finished) == ["base", "crop"]  # each cell done once
    assert {r.info.run_id for r in rs} == left | {r.info.run_id for r in finished}  # nothing else
    for r in finished:  # the trainings went on from their checkpoints: no epoch trained twice, none lost
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train.loss"))
        assert steps == [0, 1, 2], r.data.tags["cell"]


@pytest.mark.slow
def test_reference_protocol_cell_logs_both_protocols_and_the_table_shows_both(in_tmp, capsys):
    from analysis.runs import load_runs
    from analysis.tables import build_table, to_markdown
    path = write_grid(in_tmp, ["{name: baseline, set: {tricks: []}}"])
    assert main(["--grid", str(path), "--set", "eval_protocols=[ours, reference]", *TINY_FLAGS]) == 0
    client, (run,) = runs(in_tmp)
    assert run.data.tags["eval_protocol"] == "ours,reference"  # both protocols are scored
    # the old key says the same: the same cell, done
    capsys.readouterr()
    assert main(["--grid", str(path), "--set", "eval_protocol=reference", *TINY_FLAGS, "--dry-run"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  baseline")]
    assert f"{'skip':<14} done (run {run.info.run_id[:8]})" in row
    m = run.data.metrics
    assert {"synthetic.iou", "synthetic.reference.iou", "synthetic.reference.max_fbeta"} <= set(m)
    assert m["synthetic.iou"] != m["synthetic.reference.iou"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "records")} == {
        "records/synthetic.csv", "records/synthetic.reference.csv"}
    table, notes, cap = build_table("mini", load_runs("mini", f"sqlite:///{in_tmp / 'mlflow.db'}"))
    md = to_markdown(table, notes, cap)
    assert "Synthetic (test) IoU ref. protocol" in md and f"{m['synthetic.reference.iou']:.3f}" in md
    assert "inversion per batch of 8" in cap and "Evaluation protocol: ours" in cap


@pytest.mark.slow
def test_force_on_a_finished_grid_makes_one_new_run_per_cell_and_exits(in_tmp):
    """Issue 11 defect 1: --force took the cell's FINISHED run for a rival claim and looped forever."""
    from analysis.runs import load_runs
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}"])
    cmd = [sys.executable, "-m", "segtricks.ablate", "--grid", str(grid), *TINY_FLAGS]
    assert subprocess.run(cmd, cwd=in_tmp, env=_env(in_tmp), capture_output=True, timeout=300).returncode == 0
    first = {r.data.tags["cell"]: r.info.run_id for r in runs(in_tmp)[1]}
    result = subprocess.run(cmd + ["--force"], cwd=in_tmp, env=_env(in_tmp), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    client, rs = runs(in_tmp)
    assert len(rs) == 4 and all(r.info.status == "FINISHED" for r in rs)  # exactly one new run per cell
    new = {r.data.tags["cell"]: r.info.run_id for r in rs if r.info.run_id not in first.values()}
    for r in rs:
        if r.info.run_id in first.values():  # the old result stays, as history
            assert r.data.tags["superseded_by"] == new[r.data.tags["cell"]]
    current = load_runs("mini", f"sqlite:///{in_tmp / 'mlflow.db'}")
    assert sorted(current.run_id) == sorted(new.values())  # tables see only the current result
    # issue 28: the current runs carry (base) or link to (gf) the training, as the superseded ones did
    from segtricks.inference.mlflow_model import logged_model_id
    from segtricks.tracking.store import Store
    now = {r.data.tags["cell"]: r for r in rs if r.info.run_id in new.values()}
    assert now["base"].data.tags["role"] == "train" and "val.iou" in now["base"].data.metrics
    assert len(client.get_metric_history(now["base"].info.run_id, "train.loss")) == 1
    assert logged_model_id(Store(f"sqlite:///{in_tmp / 'mlflow.db'}").run(now["base"].info.run_id)) is not None
    assert now["gf"].data.tags["model_from_run"] == now["base"].info.run_id and "role" not in now["gf"].data.tags
    assert subprocess.run(cmd, cwd=in_tmp, env=_env(in_tmp), capture_output=True, timeout=300).returncode == 0
    assert len(runs(in_tmp)[1]) == 4


@pytest.mark.slow
def test_a_run_killed_during_force_is_closed_by_the_next_plain_run(in_tmp):
    """Issue 28 defect 3: kill -9 during --force, then a plain rerun: the killed run stayed RUNNING for
    good and the cell was reported skipped."""
    import shutil
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"], epochs=3)
    cmd = [sys.executable, "-m", "segtricks.ablate", "--grid", str(grid), *TINY_FLAGS[:-2]]
    assert main(["--grid", str(grid), *TINY_FLAGS[:-2]]) == 0
    (done,) = runs(in_tmp)[1]
    shutil.rmtree(in_tmp / "outputs" / "trainings")  # so that --force trains again, long enough to be killed
    proc = subprocess.Popen(cmd + ["--force"], cwd=in_tmp, env=_env(in_tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    running, _ = _wait_for_a_checkpoint(in_tmp, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    env = {**_env(in_tmp), "SEGTRICKS_STALE_AFTER_S": "600"}  # no wait: the killed worker ran here
    result = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 cells: 0 run, 1 skipped, 0 failed" in result.stdout
    status = {r.info.run_id: r.info.status for r in runs(in_tmp)[1]}
    assert status == {done.info.run_id: "FINISHED", running[0].info.run_id: "KILLED"}


@pytest.mark.slow
def test_ctrl_c_of_a_grid_is_one_line_exit_130_and_a_killed_run(in_tmp):
    """Issue 28 defect 5: Ctrl-C printed a 28-frame traceback and left the run RUNNING."""
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"], epochs=3)
    cmd = [sys.executable, "-m", "segtricks.ablate", "--grid", str(grid), *TINY_FLAGS[:-2]]
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=_env(in_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_a_checkpoint(in_tmp, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    client, (killed,) = runs(in_tmp)
    assert killed.info.status == "KILLED"
    why = Path(client.download_artifacts(killed.info.run_id, "traceback.txt", str(in_tmp))).read_text()
    assert why.startswith("interrupted (Ctrl-C)")
    env = {**_env(in_tmp), "SEGTRICKS_STALE_AFTER_S": "600"}
    assert subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, timeout=300).returncode == 0
    status = sorted(r.info.status for r in runs(in_tmp)[1])
    assert status == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_resumed_trainer_run_keeps_its_role_and_logs_its_last_epoch(in_tmp):
    """Issue 11 defect 2: a run killed after its training's last checkpoint, resumed, tagged itself
    model_from_run=<own id> and never logged the last epoch."""
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"], epochs=2)
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    client, (done,) = runs(in_tmp)
    # the state a kill leaves: training complete on disk, its run RUNNING with a dead heartbeat and
    # only the first epoch logged
    tags = {k: v for k, v in done.data.tags.items() if not k.startswith("mlflow.") and k != "heartbeat"}
    killed = client.create_run(done.info.experiment_id, tags={**tags, "heartbeat": "0"}, run_name="only")
    for key in ("train.loss", "val.iou"):
        client.log_metric(killed.info.run_id, key, done.data.metrics[key], step=0)
    client.delete_run(done.info.run_id)
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    client, (resumed,) = runs(in_tmp)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["role"] == "train" and "model_from_run" not in resumed.data.tags
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "train.loss")) == [0, 1]


@pytest.mark.slow
def test_corrupt_checkpoint_retrains_that_cell_and_the_grid_goes_on(in_tmp, capsys):
    """Issue 11 defect 4: a truncated last.pt crashed a --force rerun with an OSError naming no file."""
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}"])
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    (last,) = in_tmp.glob("outputs/trainings/*/last.pt")
    last.write_bytes(last.read_bytes()[:5000])  # truncate -s 5000
    capsys.readouterr()
    assert main(["--grid", str(grid), "--force", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert f"{last.relative_to(in_tmp)} does not load" in out and "starts again from scratch" in out
    assert checkpoint.load(last)["epoch"] == 0 and (last.parent / "last.pt.corrupt").is_file()
    assert "2 cells: 2 run, 0 skipped, 0 failed" in out


@pytest.mark.slow
def test_disk_full_while_checkpointing_stops_with_one_line_and_keeps_the_last_checkpoint(in_tmp, monkeypatch, capsys):
    """Issue 11: a full disk was `RuntimeError: [enforce fail at inline_container.cc:672]`, naming nothing."""
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}"], epochs=2)
    real_fsync = os.fsync

    def full_after_first_last_pt(fd):  # the disk fills up while epoch 2's last.pt is written
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".last.pt." in name and list(in_tmp.glob("outputs/trainings/*/last.pt")):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_after_first_last_pt)  # what write_atomic calls
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 1
    (last,) = in_tmp.glob("outputs/trainings/*/last.pt")
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line.lower()] == [
        f"error: no space left writing {last.relative_to(in_tmp)} (the previous last.pt is intact); "
        f"free space and rerun, the training resumes from its last checkpoint"]
    assert checkpoint.load(last)["epoch"] == 0 and not list(last.parent.glob(".*.tmp"))
    assert [r.info.status for r in runs(in_tmp)[1]] == ["FAILED"]  # the grid stopped: gf never started
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert main(["--grid", str(grid), *TINY_FLAGS, "--rerun-failed"]) == 0  # space freed: resumes and completes
    assert checkpoint.load(last)["epoch"] == 1


def test_skipped_images_are_a_metric_and_an_artifact_of_the_run(in_tmp, capsys):
    """Issue 11 defect 6: --skip-bad / on_error: skip dropped files without a count or a list."""
    from PIL import Image
    root, maps = in_tmp / "ds", in_tmp / "maps" / "folder"
    for folder in (root / "images", root / "masks", maps):
        folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (24, 16), (40 * i, 90, 10)).save(root / "images" / f"a{i}.png")
        Image.new("L", (24, 16), 255 * (i != 1)).save(root / "masks" / f"a{i}.png")  # the scored ones have an object
        if i != 1:
            Image.new("L", (24, 16), 180).save(maps / f"a{i}.png")
    grid = in_tmp / "maps.yaml"
    grid.write_text(f"name: maps\nbase: {DEMO_CELL}\n"
                    f"set: {{maps: {in_tmp / 'maps'}, eval: [{{name: folder, root: {root}, on_error: skip}}]}}\n"
                    f"axes:\n  post:\n    - {{name: none, set: {{tricks: []}}}}\n")
    assert main(["--grid", str(grid)]) == 0
    client, (run,) = runs(in_tmp, "maps")
    assert run.data.metrics["folder.skipped"] == 1 and run.data.metrics["folder.n_images"] == 2
    listed = Path(client.download_artifacts(run.info.run_id, "records/folder.skipped.csv", str(in_tmp))).read_text()
    assert listed.splitlines()[0] == "image_id,reason" and listed.splitlines()[1].startswith("a1,no saliency map")
    assert "folder: skipped 1 image(s) that could not be read: a1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_dead_local_worker_is_taken_over_at_once_and_a_live_one_is_announced_once(in_tmp, monkeypatch, capsys):
    """Issue 11: after a kill, a rerun waited silently up to 90 s for the dead worker's heartbeat."""
    from segtricks.tracking import claims
    from segtricks.tracking.store import Store
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    store = Store()
    exp = store.experiment("mini")
    cell = load_grid(str(grid), TINY_FLAGS[1::2]).cells[0]
    tags = {"config_hash": cell.config_hash, "training_hash": cell.training_hash, "cell": "only",
            "heartbeat": str(time.time())}
    mine = store.start(exp, "only", {**tags, "worker": f"{socket.gethostname()}:{dead.pid}"})
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0  # resumed without waiting for staleness
    client, (run,) = runs(in_tmp)
    assert run.info.run_id == mine.id and run.info.status == "FINISHED"
    assert "waiting" not in capsys.readouterr().out
    # a worker on another machine with a fresh heartbeat is waited for, and that is said once
    monkeypatch.setattr(claims, "STALE_AFTER_S", 6)
    client.delete_run(run.info.run_id)
    other = store.start(exp, "only", {**tags, "heartbeat": str(time.time()), "worker": "elsewhere:1"})
    assert main(["--grid", str(grid), *TINY_FLAGS]) == 0
    assert [r.info.run_id for r in runs(in_tmp)[1]] == [other.id]  # taken over once stale
    out = capsys.readouterr().out
    assert out.count("waiting for cell only: run") == 1 and "of worker elsewhere:1" in out
    assert "taken over if silent for 6 s" in out
