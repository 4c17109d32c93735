"""Slurm launching through submitit: a grid's training groups, or a study's workers, as array tasks.

``ablate --launcher slurm`` submits one array task per *training group* that still has work: the
cells sharing a training hash (cells scoring precomputed maps are groups of one). A task trains once
(resuming from ``last.pt``) and evaluates every cell of its group in the same allocation, so a grid
needs no job dependencies. ``tune --launcher slurm --workers N`` submits N tasks, each running the
ordinary ``tune`` loop on the shared study storage.

Preemption and time-outs: the task callables are ``submitit.helpers.Checkpointable``; on Slurm's
signal submitit requeues the task with the same arguments, and the requeued task resumes. Runs are
tagged with the Slurm job (``slurm_job``), so a requeued task takes its previous attempt's RUNNING run
as its own instead of waiting for the heartbeat to go stale (``tracking.is_live``).

Everything is checked before anything is submitted (``preflight``): ``sbatch`` on PATH, the partition
(``sinfo``), ``--slurm-arg`` keys (submitit's Slurm parameters), and that SQLite or journal files the
tasks write are on a filesystem every node reaches.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# Filesystems every node of a cluster can mount (a node-local disk is none of these).
SHARED_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb2", "smbfs", "ceph", "cephfs",
                      "glusterfs", "fuse.glusterfs", "fuse.cephfs", "fuse.sshfs", "panfs", "wekafs", "9p"}


class LaunchError(ValueError):
    """A Slurm submission that cannot work; the message says what to change."""


@dataclass
class SlurmOptions:
    """What the user asked of the scheduler (``add_arguments`` defines the flags)."""

    folder: Path  # submitit's logs and pickles: <output root>/slurm/%j
    partition: Optional[str] = None
    time_min: int = 120
    account: Optional[str] = None
    qos: Optional[str] = None
    max_parallel: int = 256
    gpus: int = 1
    cpus_per_task: int = 4
    slurm_args: Dict[str, str] = field(default_factory=dict)
    wait: bool = False


def add_arguments(ap) -> None:
    """The launcher flags shared by ``ablate`` and ``tune``."""
    ap.add_argument("--launcher", choices=["local", "slurm"], default="local",
                    help="local processes (default) or Slurm array tasks through submitit")
    group = ap.add_argument_group("Slurm (--launcher slurm)")
    group.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    group.add_argument("--time", type=int, default=120, help="minutes per task (default 120)")
    group.add_argument("--account")
    group.add_argument("--qos")
    group.add_argument("--max-parallel", type=int, default=256, help="array tasks running at once")
    group.add_argument("--gpus", type=int, default=1, help="GPUs per task (default 1; 0 for CPU partitions)")
    group.add_argument("--cpus-per-task", type=int, default=4)
    group.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any other submitit Slurm parameter, e.g. mem=32G, constraint=a100, exclude=node3")
    group.add_argument("--wait", action="store_true", help="wait for the tasks, with a progress bar")


def valid_slurm_keys() -> List[str]:
    import submitit
    return sorted(submitit.SlurmExecutor._valid_parameters())


def options_from(args, output_root: str) -> SlurmOptions:
    extra = {}
    for item in args.slurm_arg:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise LaunchError(f"--slurm-arg {item!r}: expected key=value, e.g. --slurm-arg mem=32G")
        extra[key] = value
    valid = valid_slurm_keys()
    unknown = sorted(set(extra) - set(valid))
    if unknown:
        raise LaunchError(f"--slurm-arg: unknown key(s) {', '.join(unknown)}; submitit's Slurm parameters: "
                          f"{', '.join(valid)}")
    if args.max_parallel < 1 or args.time < 1 or args.gpus < 0 or args.cpus_per_task < 1:
        raise LaunchError("--max-parallel, --time and --cpus-per-task must be ≥ 1, --gpus ≥ 0")
    return SlurmOptions(Path(output_root).resolve() / "slurm", args.partition, args.time, args.account, args.qos,
                        args.max_parallel, args.gpus, args.cpus_per_task, extra, args.wait)


def _run(cmd: Sequence[str]) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=True).stdout


def cluster_nodes() -> List[str]:
    return sorted({n for n in _run(["sinfo", "-h", "-N", "-o", "%N"]).split() if n})


def filesystem_type(path: Path) -> str:
    """The type (``nfs4``, ``ext4``, …) of the mount holding ``path``: the longest mount-point prefix."""
    path = path.resolve()
    best, kind = "", "unknown"
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3:
                mount = parts[1].replace("\\040", " ")
                if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, kind = mount, parts[2]
    return kind


def check_reachable(path: Path, what: str, nodes: List[str]) -> None:
    """``path`` (a SQLite or journal file the tasks write) must be reachable from every node: a
    one-node cluster on this machine, or a shared filesystem."""
    here = {socket.gethostname(), socket.gethostname().split(".")[0]}
    if set(nodes) <= here:
        return
    kind = filesystem_type(path.parent if not path.exists() else path)
    if kind not in SHARED_FILESYSTEMS:
        raise LaunchError(
            f"{what} {path} is on a {kind} filesystem that the cluster's nodes ({', '.join(nodes[:5])}"
            f"{', …' if len(nodes) > 5 else ''}) cannot reach, and SQLite locks under many writers: run an "
            f"MLflow server (mlflow server --backend-store-uri postgresql://...) or use PostgreSQL, or put the "
            f"file on a shared filesystem")


def preflight(opts: SlurmOptions, files: Dict[str, Optional[Path]]) -> None:
    """Every check that can fail before submission (see the module docstring)."""
    if shutil.which("sbatch") is None:
        raise LaunchError("--launcher slurm: sbatch is not on PATH; run on a Slurm login node, or use "
                          "--launcher local")
    try:
        partitions = {p.rstrip("*") for p in _run(["sinfo", "-h", "-o", "%P"]).split()}
        nodes = cluster_nodes()
    except (subprocess.SubprocessError, OSError) as exc:
        raise LaunchError(f"--launcher slurm: sinfo failed ({exc}); is the Slurm controller reachable?") from None
    if opts.partition is not None and opts.partition not in partitions:
        raise LaunchError(f"--partition {opts.partition}: unknown partition; sinfo lists: "
                          f"{', '.join(sorted(partitions))}")
    for what, path in files.items():
        if path is not None:
            check_reachable(path, what, nodes)


def executor(opts: SlurmOptions, name: str):
    """A submitit executor for ``opts``: one task per array element, ``opts.gpus`` GPUs each (``--gres``,
    so Slurm sets CUDA_VISIBLE_DEVICES), logs under ``opts.folder/<job id>``."""
    import submitit
    ex = submitit.AutoExecutor(folder=str(opts.folder / "%j"), cluster="slurm")
    params: Dict[str, Any] = {
        "name": name, "timeout_min": opts.time_min, "tasks_per_node": 1, "nodes": 1,
        "cpus_per_task": opts.cpus_per_task, "slurm_array_parallelism": opts.max_parallel,
        "slurm_signal_delay_s": 120,  # time to write a checkpoint before the kill
        "slurm_additional_parameters": {"kill-on-invalid-dep": "yes"},
    }
    if opts.gpus:
        params["slurm_gres"] = f"gpu:{opts.gpus}"
    for key, value in (("slurm_partition", opts.partition), ("slurm_account", opts.account),
                       ("slurm_qos", opts.qos)):
        if value:
            params[key] = value
    params.update({f"slurm_{k}": v for k, v in opts.slurm_args.items()})
    ex.update_parameters(**params)
    return ex


def slurm_job() -> Optional[str]:
    """This process's Slurm job (``<array job>_<task>`` for array tasks), None outside Slurm. Stable
    across requeues: a requeued task has the same id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def wait_for(jobs: list, desc: str) -> List[Optional[str]]:
    """Block until every job has left the queue (``squeue``; ``sacct`` needs accounting, which small
    clusters lack), with a progress bar. Returns each job's error text, or None when it returned."""
    from tqdm.auto import tqdm
    pending = {j.job_id for j in jobs}
    with tqdm(total=len(jobs), desc=desc, unit="task") as bar:
        while pending:
            time.sleep(2)
            queued = set(_run(["squeue", "-h", "-r", "-o", "%i"]).split())
            left = {j for j in pending if j in queued}
            bar.update(len(pending) - len(left))
            pending = left
    errors = []
    for job in jobs:
        if not job.paths.result_pickle.exists():  # killed, cancelled or out of time without requeue
            errors.append(f"task {job.job_id} ended without a result; its log: {job.paths.stderr}")
            continue
        try:
            job.result()
            errors.append(None)
        except Exception as exc:  # the task raised: submitit re-raises with the remote traceback
            lines = str(exc).strip().splitlines()
            errors.append(f"task {job.job_id} failed: {lines[-1] if lines else type(exc).__name__}")
    return errors
