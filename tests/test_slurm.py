"""Grids and studies on a real single-node Slurm cluster, through sbatch (no mock).

`.ci/run` starts one with `.ci/slurm.sh` (Debian's slurmctld/slurmd/munge, one node, two stand-in
GPUs); elsewhere these tests skip, saying so. Assertions use MLflow run states and `squeue`, not
`sacct` (there is no accounting database). The parsing of `sinfo`/`scontrol`/`squeue` output is also
tested on captured output, without a cluster.
"""
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from helpers import TINY_FLAGS, grid_runs, store_client, unreadable_folder, write_grid as write_grid_file, write_study
from segtricks.engine import checkpoint
from segtricks.launchers import slurm
from segtricks.ablate import main as ablate
from segtricks.tune import main as tune


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


needs_slurm = pytest.mark.skipif(not _slurm_up(), reason="no Slurm cluster here (sinfo/sbatch absent or no idle "
                                                         "node): .ci/slurm.sh starts a one-node cluster")
SLURM = ["--launcher", "slurm", "--cpus-per-task", "1", "--time", "15"]


def write_grid(tmp_path, entries, epochs=1):
    return write_grid_file(tmp_path, entries, epochs, name="sl")


def runs(tmp_path):
    client, found = grid_runs(tmp_path, "sl")
    return client, {r.data.tags["cell"]: r for r in found}


@pytest.mark.slow
@needs_slurm
def test_two_group_grid_finishes_every_cell_once_with_one_gpu_per_task(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}",
                               "{name: crop, set: {tricks: [crop]}}"])
    start = time.time()
    assert ablate(["--grid", str(grid), *TINY_FLAGS, *SLURM, "--wait"]) == 0
    out = capsys.readouterr().out
    print(f"tiny two-group grid: submit to all FINISHED in {time.time() - start:.0f} s")
    assert "submitted 2 Slurm array task(s)" in out and "3 cells: 3 finished, 0 not" in out
    assert "python -m analysis.make_tables --grid" in out and "?workflowType=machine_learning" in out  # the local next steps
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
    assert ablate(["--grid", str(grid), *TINY_FLAGS, *SLURM, "--wait"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


@pytest.mark.slow
@needs_slurm
def test_two_seeds_are_one_task_per_seed_that_rebuilds_the_same_replicas(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: base, set: {tricks: []}}", "{name: gf, set: {tricks: [gf]}}"])
    assert ablate(["--grid", str(grid), "--seeds", "0,1", *TINY_FLAGS, *SLURM, "--wait"]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 Slurm array task(s)" in out and "4 runs (2 cells × 2 seeds): 4 finished, 0 not" in out
    assert any(line.endswith("  base @ seed 1, gf @ seed 1") for line in out.splitlines())  # a task's cells
    client = store_client(in_tmp)
    rs = client.search_runs([client.get_experiment_by_name("sl").experiment_id])
    assert sorted((r.data.tags["cell"], r.data.tags["seed"], r.info.status) for r in rs) == [
        ("base", "0", "FINISHED"), ("base", "1", "FINISHED"), ("gf", "0", "FINISHED"), ("gf", "1", "FINISHED")]
    job_of = {(r.data.tags["cell"], r.data.tags["seed"]): r.data.tags["slurm_job"] for r in rs}
    assert job_of["base", "0"] == job_of["gf", "0"] != job_of["base", "1"] == job_of["gf", "1"]
    assert ablate(["--grid", str(grid), "--seeds", "0,1", *TINY_FLAGS, *SLURM, "--wait"]) == 0
    assert "nothing to submit" in capsys.readouterr().out


def _queued() -> set:
    return set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())


@pytest.mark.slow
@needs_slurm
def test_a_preempted_task_is_requeued_and_finishes_without_training_an_epoch_twice(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"], epochs=4)
    assert ablate(["--grid", str(grid), *TINY_FLAGS, *SLURM]) == 0  # submit and return
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


@pytest.mark.slow
@needs_slurm
def test_a_failing_cell_is_failed_while_the_other_group_finishes(in_tmp, capsys):
    grid = write_grid(in_tmp, ["{name: ok, set: {tricks: []}}",
                               "{name: broken, set: {tricks: [crop], eval: [{name: folder, root: %s}]}}" %
                               unreadable_folder(in_tmp)])
    assert ablate(["--grid", str(grid), *TINY_FLAGS[:-2], *SLURM, "--wait"]) == 1
    client, by_cell = runs(in_tmp)
    assert by_cell["ok"].info.status == "FINISHED" and by_cell["broken"].info.status == "FAILED"
    tb = client.download_artifacts(by_cell["broken"].info.run_id, "traceback.txt", str(in_tmp))
    assert "DatasetError" in Path(tb).read_text()


@pytest.mark.slow
@needs_slurm
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


@needs_slurm
def test_bad_slurm_input_is_refused_before_anything_is_submitted(in_tmp, capsys, monkeypatch):
    grid = write_grid(in_tmp, ["{name: a, set: {tricks: []}}"])
    before = _queued()
    assert ablate(["--grid", str(grid), *SLURM, "--partition", "nosuch"]) == 2
    assert "--partition nosuch: unknown partition; sinfo lists: debug" in capsys.readouterr().err
    assert ablate(["--grid", str(grid), *SLURM, "--slurm-arg", "colour=blue"]) == 2
    assert "--slurm-arg: unknown key(s) colour" in capsys.readouterr().err
    monkeypatch.setattr(slurm, "cluster_nodes", lambda: ["gpu-node1", "gpu-node2"])  # a real cluster
    assert ablate(["--grid", str(grid), *SLURM]) == 2
    err = capsys.readouterr().err
    assert f"MLflow store {in_tmp / 'mlflow.db'} is on a" in err and "cannot reach" in err and "PostgreSQL" in err
    monkeypatch.setenv("PATH", "/nonexistent")
    assert ablate(["--grid", str(grid), *SLURM]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err
    monkeypatch.undo()  # PATH back (and the working folder: nothing below needs it)
    assert _queued() == before


# What .ci/slurm.sh's cluster printed (a 2-CPU machine), and a cluster with CPU and GPU nodes.
CI_NODES = "vm|2|23081|gpu:2\n"
CI_PARTITION = ("PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES "
                "QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO "
                "MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm "
                "PriorityJobFactor=1 PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=FORCE:4 OverTimeLimit=NONE "
                "PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) "
                "DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=23081M,node=1,billing=2\n")
MIXED_NODES = "cpu1|64|256000|(null)\ng1|8|128000+|gpu:a100:4(S:0-1)\ng2|16|64000|gpu:v100:2,gpu:t4:1\n"
MIXED_PARTITION = "PartitionName=gpu MaxTime=1-00:00:00 MaxCPUsPerNode=32 MaxMemPerNode=UNLIMITED State=UP"


def test_sinfo_and_scontrol_output_is_parsed():
    assert slurm.parse_nodes(CI_NODES) == [slurm.Node("vm", 2, 23081, 2)]
    assert slurm.parse_nodes(MIXED_NODES + "a garbled line\n") == [
        slurm.Node("cpu1", 64, 256000, 0), slurm.Node("g1", 8, 128000, 4), slurm.Node("g2", 16, 64000, 3)]
    settings = slurm.parse_settings(CI_PARTITION)
    assert (settings["MaxTime"], settings["State"], settings["MaxMemPerNode"]) == ("UNLIMITED", "UP", "UNLIMITED")
    assert settings["TRES"] == "cpu=2,mem=23081M,node=1,billing=2"
    assert [slurm.slurm_minutes(t) for t in ("UNLIMITED", "90", "5:30", "02:00:00", "1-00:00:00", "2-12", "1-0:30")] \
        == [None, 90, 5.5, 120, 1440, 3600, 1470]
    assert [slurm.slurm_megabytes(m) for m in ("32G", "500M", "32000", "1T", "2gb", "lots")] \
        == [32768, 500, 32000, 1024 ** 2, 2048, None]
    assert [slurm.gpu_count(g) for g in ("gpu", "gpu:a100", "gpu:3(S:0,1)", "mps:100", "(null)", "?")] \
        == [1, 1, 3, 0, 0, None]


CI = slurm.Partition("debug", slurm.parse_nodes(CI_NODES), slurm.parse_settings(CI_PARTITION))
MIXED = slurm.Partition("gpu", slurm.parse_nodes(MIXED_NODES), slurm.parse_settings(MIXED_PARTITION))


@pytest.mark.parametrize("partition, asked, line", [
    (CI, {}, "--cpus-per-task 4: the nodes of partition 'debug' have at most 2 CPUs; use --cpus-per-task 2 or less"),
    (CI, {"cpus_per_task": 2, "gpus": 3},
     "--gpus 3: the nodes of partition 'debug' have at most 2 GPUs; use --gpus 2 or less"),
    (CI, {"cpus_per_task": 1, "slurm_args": {"gres": "gpu:a100:4"}}, "--slurm-arg gres=gpu:a100:4: the nodes of "
     "partition 'debug' have at most 2 GPUs; use --slurm-arg gres=gpu:a100:2 or less"),
    (CI, {"cpus_per_task": 1, "slurm_args": {"mem": "64G"}}, "--slurm-arg mem=64G: the nodes of partition 'debug' "
     "have at most 23081 MB of memory; use --slurm-arg mem=23081M or less"),
    (CI, {"cpus_per_task": 2, "slurm_args": {"mem_per_cpu": "16G"}}, "--slurm-arg mem_per_cpu=16G: the nodes of "
     "partition 'debug' have at most 23081 MB of memory, 11540 MB for each of the task's 2 CPUs; use "
     "--slurm-arg mem_per_cpu=11540M or less"),
    (MIXED, {"time_min": 2000}, "--time 2000: partition 'gpu' allows at most 1440 minutes per job "
     "(MaxTime=1-00:00:00); use --time 1440 or less"),
    (MIXED, {"cpus_per_task": 12}, None),  # g2 has a GPU and 16 CPUs
    (MIXED, {"gpus": 4, "cpus_per_task": 12}, "--cpus-per-task 12: the nodes of partition 'gpu' with 4 GPUs have at "
     "most 8 CPUs; use --cpus-per-task 8 or less"),
    (MIXED, {"gpus": 0, "cpus_per_task": 48}, "--cpus-per-task 48: the nodes of partition 'gpu' have at most 32 "
     "CPUs for a job (MaxCPUsPerNode=32); use --cpus-per-task 32 or less"),
    (MIXED, {"gpus": 0, "cpus_per_task": 32, "slurm_args": {"mem": "300G"}}, "--slurm-arg mem=300G: the nodes of "
     "partition 'gpu' with 32 CPUs have at most 256000 MB of memory; use --slurm-arg mem=256000M or less"),
    (slurm.Partition("debug", [], {}), {"cpus_per_task": 999}, None),  # sinfo said nothing: not blocked
    (slurm.Partition("debug", slurm.parse_nodes("vm|?|?|?\n"), {}), {"cpus_per_task": 999}, None),
])
def test_what_no_node_of_the_partition_can_give_is_refused_naming_the_flag_and_the_largest_value(
        tmp_path, partition, asked, line):
    opts = slurm.SlurmOptions(tmp_path, **asked)
    if line is None:
        slurm.check_fits(opts, partition)
    else:
        with pytest.raises(slurm.LaunchError) as exc:
            slurm.check_fits(opts, partition)
        assert str(exc.value) == line


def test_a_pending_reason_that_means_never_says_what_to_change():
    assert slurm.never_starts("PartitionConfig", "debug") == (
        "it asks more CPUs, GPUs or memory than a node of partition 'debug' has (sinfo -N -p debug -o "
        "'%N %c %m %G'); lower --cpus-per-task, --gpus or --slurm-arg mem, or choose another --partition")
    assert "lower --time" in slurm.never_starts("PartitionTimeLimit", "debug")
    assert "nodelist" in slurm.never_starts("ReqNodeNotAvail, UnavailableNodes:node3", "debug")
    assert "change --qos" in slurm.never_starts("QOSMaxWallDurationPerJobLimit", "debug")
    for reason in ("Resources", "Priority", "BeginTime", "Dependency", "ReqNodeNotAvail, Reserved for maintenance"):
        assert slurm.never_starts(reason, "debug") is None  # something that ends frees what it waits for
    assert slurm.progress_note([("PENDING", "Resources"), ("RUNNING", "None"), ("PENDING", "Resources")]) \
        == "2 pending (Resources), 1 running"


def _ci_node() -> slurm.Node:
    (node,) = slurm.parse_nodes(subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N|%c|%m|%G"],
                                               capture_output=True, text=True, check=True).stdout)
    return node


def _queued_names() -> list:
    return subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout.split()


WAIT_LIMIT_S = 300


@pytest.fixture
def deadline():
    """A wait that does not end fails the test instead of hanging it (the defect: a task that can never
    start, followed for ever), and what this module's grids left pending is cancelled."""
    def expire(*_):
        for name in ("segtricks-demo", "segtricks-sl"):
            subprocess.run(["scancel", "--state", "PENDING", "--name", name])
        raise AssertionError(f"still waiting after {WAIT_LIMIT_S} s: a task is followed for ever")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(WAIT_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
@needs_slurm
def test_the_default_slurm_flags_run_or_are_refused_before_submission(in_tmp, capsys, deadline):
    """The issue's command, `--cpus-per-task 4` by default, on the CI node (as many CPUs as the machine)."""
    node = _ci_node()
    argv = ["--grid", "demo", "--launcher", "slurm", "--wait"]
    if node.cpus >= 4:
        assert ablate([*argv, *TINY_FLAGS]) == 0  # the defaults fit: it runs (tiny, to finish in a minute)
    else:
        assert ablate(argv) == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"error: --cpus-per-task 4: the nodes of partition 'debug' have at most {node.cpus} CPUs; use "
            f"--cpus-per-task {node.cpus} or less")
        assert not (in_tmp / "outputs" / "slurm").exists()
    assert "segtricks-demo" not in _queued_names()


@pytest.mark.slow
@needs_slurm
def test_a_task_slurm_can_never_start_is_cancelled_and_the_grid_exits_1_saying_what_to_change(
        in_tmp, capsys, monkeypatch, deadline):
    """Past a preflight that learns nothing from sinfo (it does not block), Slurm takes the job and holds
    it PENDING (PartitionConfig) for ever: the wait shows why, cancels it and stops."""
    grid = write_grid(in_tmp, ["{name: only, set: {tricks: []}}"])
    monkeypatch.setattr(slurm, "partition_info", lambda name: slurm.Partition(name, [], {}))
    cpus = _ci_node().cpus + 1
    assert ablate(["--grid", str(grid), *TINY_FLAGS, *SLURM, "--cpus-per-task", str(cpus), "--wait"]) == 1
    out, err = capsys.readouterr()
    job = next(line.split()[0] for line in out.splitlines() if line.strip().endswith("only"))
    assert "1 pending (PartitionConfig)" in err  # the progress line
    assert f"error: task {job} can never start, Slurm holds it PENDING (PartitionConfig): it asks more CPUs, GPUs " \
           "or memory than a node of partition 'debug' has (sinfo -N -p debug -o '%N %c %m %G'); lower " \
           "--cpus-per-task, --gpus or --slurm-arg mem, or choose another --partition; it was cancelled" \
           in err.splitlines()
    assert "1 cells: 0 finished, 1 not" in out
    assert job not in _queued()


@pytest.mark.slow
@needs_slurm
def test_the_progress_line_says_why_a_task_waits(tmp_path, capsys, deadline):
    opts = slurm.SlurmOptions(tmp_path / "slurm", time_min=5, gpus=0, cpus_per_task=1)
    ex = slurm.executor(opts, "segtricks-begin")
    ex.update_parameters(slurm_additional_parameters={"begin": "now+3"})  # held: BeginTime, then it runs
    (job,) = ex.map_array(abs, [-1])
    assert slurm.wait_for([job], "begin") == [None]
    assert "1 pending (BeginTime)" in capsys.readouterr().err
    assert job.result() == 1
