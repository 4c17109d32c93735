"""The Slurm cluster as the launchers see it: the launcher flags, every check before a submission, the
submitit executor, and the wait for the tasks. Torch-free and light: the commands parse these flags,
before anything heavy is imported.

What is submitted (a grid's training groups, a study's workers) is ``segtricks.launchers.slurm_submit``'s;
the tasks themselves (``segtricks.runners.tasks``) are ``submitit.helpers.Checkpointable``: on
preemption or time-out submitit requeues a task with the same job, and it resumes. Runs are tagged
with the Slurm job (``segtricks.tracking.claims.slurm_job``), so a requeued task takes its previous attempt's RUNNING run as its
own instead of waiting for the heartbeat to go stale (``segtricks.tracking.claims.is_live``).

Everything is checked before anything is submitted (``preflight``): ``sbatch`` on PATH, the partition
(``sinfo``), ``--slurm-arg`` keys (submitit's Slurm parameters), that what a task asks (CPUs, GPUs,
memory, time) fits a node and the limits of the partition (``check_fits``: Slurm would accept the job
and leave it pending for ever), and that SQLite or journal files the tasks write are on a filesystem
every node reaches. ``wait_for`` shows why tasks wait, and cancels a task whose reason means it can
never start (``NEVER_STARTS``).

Over 400 lines on purpose: every check before a submission (the partition's limits, GPUs, the
store and storage on a shared filesystem) beside the flags it checks and the executor it configures.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from segtricks.errors import BadInput

# Filesystems every node of a cluster can mount (a node-local disk is none of these).
SHARED_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb2", "smbfs", "ceph", "cephfs",
                      "glusterfs", "fuse.glusterfs", "fuse.cephfs", "fuse.sshfs", "panfs", "wekafs", "9p"}


class LaunchError(BadInput):
    """A Slurm submission that cannot work; the message says what to change (exit status 2)."""


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
    group.add_argument("--cpus-per-task", type=int, default=4,
                       help="default 4; refused before submission when no node of the partition has that many")
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


@dataclass
class Node:
    """A node as ``sinfo -N`` shows it; None where a field did not parse (that check is skipped)."""

    name: str
    cpus: Optional[int]
    mem: Optional[int]  # MB
    gpus: Optional[int]


@dataclass
class Partition:
    """A partition's nodes (``sinfo -N -p``) and its settings (``scontrol show partition -o``: MaxTime,
    MaxCPUsPerNode, MaxMemPerNode, State, ...; empty when scontrol failed)."""

    name: str
    nodes: List[Node]
    settings: Dict[str, str]


def slurm_minutes(text: str) -> Optional[float]:
    """A Slurm time (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in minutes; None for
    UNLIMITED/INFINITE and for what does not parse."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        return None
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:
        hours, minutes, seconds = a, b, c
    else:
        hours, minutes, seconds = 0, a, b or 0
    return (days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def slurm_megabytes(text: str) -> Optional[float]:
    """A Slurm memory size (``32G``, ``500M``, ``32000``: megabytes without a unit) in MB; None for what
    does not parse."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.strip().upper())
    if not m:
        return None
    return float(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]


def gpu_count(gres: str) -> Optional[int]:
    """GPUs in a gres string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:2``, ``(null)``;
    None for what does not parse."""
    total = 0
    for item in filter(None, re.sub(r"\([^)]*\)", "", gres.strip()).split(",")):  # without bindings (S:0-1)
        if not re.fullmatch(r"[A-Za-z_][\w-]*(:[\w.-]+)*", item.strip()):
            return None
        name, _, rest = item.strip().partition(":")
        if name == "gpu":
            count = rest.rpartition(":")[2]
            total += int(count) if count.isdigit() else 1  # gpu or gpu:a100: one
    return total


def _count(text: str) -> Optional[int]:
    text = text.strip().rstrip("+")  # sinfo's "2+": at least
    return int(text) if text.isdigit() else None


def parse_nodes(text: str) -> List[Node]:
    """``sinfo -h -N -o %N|%c|%m|%G`` output; lines that do not have four fields are skipped."""
    nodes = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) == 4:
            nodes.append(Node(fields[0].strip(), _count(fields[1]), _count(fields[2]), gpu_count(fields[3])))
    return nodes


def parse_settings(text: str) -> Dict[str, str]:
    """``scontrol show partition <name> -o`` output: Key=Value pairs."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


def partition_info(name: str) -> Partition:
    """What ``sinfo`` and ``scontrol`` say of partition ``name``; what they do not say is not checked."""
    nodes: List[Node] = []
    settings: Dict[str, str] = {}
    try:
        nodes = parse_nodes(_run(["sinfo", "-h", "-N", "-p", name, "-o", "%N|%c|%m|%G"]))
        settings = parse_settings(_run(["scontrol", "show", "partition", name, "-o"]))
    except (subprocess.SubprocessError, OSError):
        pass
    return Partition(name, nodes, settings)


@dataclass
class Ask:
    """One resource a task asks for: the flag as typed (a refusal names it), the amount per node in the
    unit of the partition's limit (CPUs, GPUs, MB, minutes) and ``fix``, the flag with ``{}`` where the
    value goes. ``per`` > 1: the value is for each of the task's ``per`` ``per_what`` (``mem_per_cpu``)."""

    flag: str
    amount: float
    fix: str
    per: int = 1
    per_what: str = ""

    def refuse(self, where: str, limit: float) -> LaunchError:
        allowed = int(limit // self.per)
        if self.per > 1:
            where += f", {allowed} MB for each of the task's {self.per} {self.per_what}"
        return LaunchError(f"{self.flag}: {where}; use {self.fix.format(allowed)}" + (" or less" if allowed else ""))


def asks(opts: SlurmOptions) -> Dict[str, Optional[Ask]]:
    """What one task asks for, as ``executor`` submits it (a ``--slurm-arg`` overrides the flag); None
    where nothing is asked or a value does not parse (sbatch reports that)."""
    extra = opts.slurm_args
    cpus = Ask(f"--cpus-per-task {opts.cpus_per_task}", opts.cpus_per_task, "--cpus-per-task {}")
    if "cpus_per_task" in extra:
        cpus = Ask(f"--slurm-arg cpus_per_task={extra['cpus_per_task']}", _count(extra["cpus_per_task"]) or 0,
                   "--slurm-arg cpus_per_task={}")
    gpus: Optional[Ask] = Ask(f"--gpus {opts.gpus}", opts.gpus, "--gpus {}")
    if "gres" in extra:
        value = extra["gres"]
        fix = re.sub(r"(gpu(?::[^:,]+)?:)\d+", r"\1{}", value, count=1)  # gpu:a100:4 → gpu:a100:{}
        count = gpu_count(value)
        gpus = None if count is None else Ask(f"--slurm-arg gres={value}", count,
                                              "--slurm-arg gres=" + (fix if "{}" in fix else "gpu:{}"))
    for key in ("gpus_per_node", "gpus_per_task"):  # one task per node: per task is per node
        if key in extra:
            count = gpu_count(f"gpu:{extra[key]}")
            gpus = None if count is None else Ask(f"--slurm-arg {key}={extra[key]}", count, f"--slurm-arg {key}={{}}")
    mem = None
    for key, per, per_what in (("mem", 1, ""), ("mem_per_cpu", int(cpus.amount), "CPUs"),
                               ("mem_per_gpu", int(gpus.amount) if gpus else 0, "GPUs")):
        size = slurm_megabytes(extra.get(key, ""))
        if size and per:  # mem=0: the whole node; mem_per_gpu without GPUs: sbatch says so
            mem = Ask(f"--slurm-arg {key}={extra[key]}", size * per, f"--slurm-arg {key}={{}}M", per, per_what)
    if "time" in extra:
        minutes = slurm_minutes(extra["time"])
        time_ask = Ask(f"--slurm-arg time={extra['time']}", minutes, "--slurm-arg time={}") if minutes else None
    else:
        time_ask = Ask(f"--time {opts.time_min}", opts.time_min, "--time {}")
    return {"cpus": cpus, "gpus": gpus, "mem": mem, "time": time_ask}


def check_fits(opts: SlurmOptions, part: Partition) -> None:
    """Refuse what no node of the partition, or its limits, can give one task: Slurm accepts such a job
    and holds it PENDING for ever (PartitionConfig, PartitionTimeLimit). GPUs, then CPUs, then memory
    are compared on the nodes that have what the previous ones asked."""
    ask = asks(opts)
    where = f"partition {part.name!r}"
    state = part.settings.get("State", "UP")
    if state in ("DRAIN", "INACTIVE"):
        raise LaunchError(f"--partition {part.name}: the partition is {state} (scontrol show partition "
                          f"{part.name}) and takes no jobs; choose another --partition")
    max_time = slurm_minutes(part.settings.get("MaxTime", ""))
    if ask["time"] and max_time is not None and ask["time"].amount > max_time:
        raise ask["time"].refuse(f"{where} allows at most {max_time:g} minutes per job (MaxTime="
                                 f"{part.settings['MaxTime']})", max_time)
    nodes, having = part.nodes, []
    for key, cap, what in (("gpus", None, "GPUs"), ("cpus", "MaxCPUsPerNode", "CPUs"),
                           ("mem", "MaxMemPerNode", "MB of memory")):
        values = [getattr(n, key) for n in nodes]
        if ask[key] is None or not values or None in values:
            continue
        capped = _count(part.settings.get(cap, "")) if cap else None
        if capped is not None:
            values = [min(v, capped) for v in values]
        limit = max(values)
        if ask[key].amount > limit:
            have = "have no GPU" if key == "gpus" and not limit else f"have at most {limit} {what}"
            if capped is not None and limit == capped:
                have += f" for a job ({cap}={capped})"
            qualifier = f" with {' and '.join(having)}" if having else ""
            raise ask[key].refuse(f"the nodes of {where}{qualifier} {have}", limit)
        fitting = [n for n, v in zip(nodes, values) if v >= ask[key].amount]
        if len(fitting) < len(nodes):
            having.append(f"{ask[key].amount:g} {what.removesuffix('s') if ask[key].amount == 1 else what}")
        nodes = fitting


def preflight(opts: SlurmOptions, files: Dict[str, Optional[Path]]) -> None:
    """Every check that can fail before submission (see the module docstring)."""
    if shutil.which("sbatch") is None:
        raise LaunchError("--launcher slurm: sbatch is not on PATH; run on a Slurm login node, or use "
                          "--launcher local")
    try:
        listed = _run(["sinfo", "-h", "-o", "%P"]).split()
        nodes = cluster_nodes()
    except (subprocess.SubprocessError, OSError) as exc:
        raise LaunchError(f"--launcher slurm: sinfo failed ({exc}); is the Slurm controller reachable?") from None
    partitions = {p.rstrip("*") for p in listed}
    if opts.partition is not None and opts.partition not in partitions:
        raise LaunchError(f"--partition {opts.partition}: unknown partition; sinfo lists: "
                          f"{', '.join(sorted(partitions))}")
    name = opts.partition or next((p.rstrip("*") for p in listed if p.endswith("*")), None)
    if name is None:
        raise LaunchError(f"--partition: the cluster has no default partition; name one of: "
                          f"{', '.join(sorted(partitions))}")
    check_fits(opts, partition_info(name))
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


# Why a pending job waits, when it is for ever: Slurm accepted the job but nothing that ends frees what it
# asks (reason codes of squeue's %r), and what to change. Reasons naming a per-job QOS or association
# limit (QOSMaxWallDurationPerJobLimit, AssocMaxCpuPerJobLimit, ...) are never too.
NEVER_STARTS = {
    "PartitionConfig": "it asks more CPUs, GPUs or memory than a node of partition {p!r} has (sinfo -N -p {p} "
                       "-o '%N %c %m %G'); lower --cpus-per-task, --gpus or --slurm-arg mem, or choose another "
                       "--partition",
    "PartitionTimeLimit": "its time limit exceeds the MaxTime of partition {p!r} (scontrol show partition {p}); "
                          "lower --time",
    "PartitionNodeLimit": "it asks more nodes than partition {p!r} has or allows; lower --slurm-arg nodes or choose "
                          "another --partition",
    "BadConstraints": "no node of partition {p!r} meets its constraints; change --slurm-arg constraint or choose "
                      "another --partition",
    "ReqNodeNotAvail": "the nodes it may run on are down, drained or excluded; change --slurm-arg nodelist or "
                       "exclude, or choose another --partition",
    "InvalidAccount": "its account is not valid here; change --account",
    "InvalidQOS": "its QOS is not valid here; change --qos",
    "DependencyNeverSatisfied": "a job it depends on failed; change --slurm-arg dependency",
}


def never_starts(reason: str, partition: str) -> Optional[str]:
    """What to change when a pending job's ``reason`` means it can never start, else None."""
    code = reason.split(",")[0].strip()  # "ReqNodeNotAvail, UnavailableNodes:node3"
    if "maintenance" in reason.lower():  # "ReqNodeNotAvail, Reserved for maintenance": it ends
        return None
    if code in NEVER_STARTS:
        return NEVER_STARTS[code].format(p=partition)
    if "PerJob" in code:
        return "it exceeds a per-job limit of its QOS or account (sacctmgr show qos); lower --time, " \
               "--cpus-per-task, --gpus or the memory, or change --qos"
    return None


def queue() -> Dict[str, Tuple[str, str, str]]:
    """This user's queued jobs, array tasks one by one: job id → (state, reason, partition)."""
    out = _run(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T|%r|%P"])
    rows = (line.split("|") for line in out.splitlines())
    return {row[0].strip(): (row[1], row[2], row[3]) for row in rows if len(row) == 4}


def progress_note(states: Sequence[Tuple[str, str]]) -> str:
    """The progress bar's postfix: how many tasks run and how many wait, for what (``1 running,
    2 pending (Resources)``)."""
    counts = Counter(f"pending ({reason})" if state == "PENDING" else state.lower() for state, reason in states)
    return ", ".join(f"{n} {what}" for what, n in counts.items())


def wait_for(jobs: list, desc: str) -> List[Optional[str]]:
    """Block until every job has left the queue (``squeue``; ``sacct`` needs accounting, which small
    clusters lack), with a progress bar that says why tasks wait. A task that can never start
    (``never_starts``) is cancelled and the wait ends there: the other tasks still queued go on, unwatched.
    Returns each job's error text, or None when it returned."""
    from tqdm.auto import tqdm
    pending = {j.job_id for j in jobs}
    never: Dict[str, str] = {}
    queued: Dict[str, Tuple[str, str, str]] = {}
    with tqdm(total=len(jobs), desc=desc, unit="task") as bar:
        while pending and not never:
            time.sleep(2)
            queued = queue()
            left = {j for j in pending if j in queued}
            bar.update(len(pending) - len(left))
            pending = left
            bar.set_postfix_str(progress_note([queued[j][:2] for j in sorted(pending)]))
            for j in sorted(pending):
                state, reason, partition = queued[j]
                change = never_starts(reason, partition) if state == "PENDING" else None
                if change:
                    never[j] = (f"task {j} can never start, Slurm holds it PENDING ({reason}): {change}; "
                                f"it was cancelled")
        if never:
            subprocess.run(["scancel", *never], capture_output=True, timeout=60)
    errors = []
    for job in jobs:
        if job.job_id in never:
            errors.append(never[job.job_id])
            continue
        if job.job_id in pending:
            errors.append(f"task {job.job_id} is still {queued[job.job_id][0].lower()}, not waited for: it goes on "
                          f"(squeue -j {job.job_id}); its log: {job.paths.stderr}")
            continue
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
