"""Running a grid: plan each cell against the tracking store, then train, evaluate and log it as an
MLflow run (here, in local worker processes, or as Slurm jobs). ``segtricks.ablate`` is its command line.

Cells whose config hash already has a FINISHED run are skipped; a run left RUNNING by a killed
worker is resumed (training continues from its last checkpoint); a cell that raises is marked FAILED
with its traceback as an artifact and the grid goes on. Cells that differ only in post-processing
share one ``Training`` (``<output-root>/trainings/<training hash>``); the run that trains it is tagged
``role=train`` and the others ``model_from_run=<its run id>``. ``--workers N`` starts N worker
processes that claim cells through the tracking store.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import submitit
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from segtricks.evaluation import sample_figures as figures

from segtricks.runners import estimate, preflight, slurm

from segtricks.tracking import store as tracking
from segtricks.engine.checkpoint import NoSpaceError
from segtricks.spec.config import DatasetRef
from segtricks.evaluation.model_evaluation import describe_skipped, evaluate_model, skipped_csv
from segtricks.spec.grid import Cell, Grid, load_grid
from segtricks.evaluation.map_evaluation import evaluate_maps
from segtricks.engine.hooks import EpochLogger
from segtricks.engine.loop import resolve_device
from segtricks.engine.training import State
from segtricks.method.tricks import post_trick_names

SUMMARY_METRICS = ("iou", "max_fbeta", "corloc")
SAMPLES = 16  # first images of each evaluation dataset kept with a run, for qualitative figures
SAMPLE_SIDE = 192


class Action(Enum):
    """What one invocation will do with a cell."""

    TRAIN = "train+evaluate"
    EVALUATE = "evaluate"  # the training is complete, or another cell of the grid trains it
    EVALUATE_MAPS = "evaluate-maps"
    RESUME = "resume"  # a dead worker's run, continued in place
    WAIT = "wait"  # another worker holds the cell, or the training it shares
    SKIP = "skip"


@dataclass
class Step:
    cell: Cell
    action: Action
    reason: str
    run_id: Optional[str] = None


def ordered(cells: List[Cell]) -> List[Cell]:
    """Group cells by training; in each group the cell without post-processing trains first."""
    groups: Dict[str, List[Cell]] = {}
    for c in cells:
        groups.setdefault(c.training_hash if c.trains else c.config_hash, []).append(c)
    out = []
    for group in groups.values():
        out += sorted(group, key=lambda c: (len(post_trick_names(c.cfg.tricks)) > 0, cells.index(c)))
    return out


def plan(grid: Grid, runs: Dict[str, list], force: bool, rerun_failed: bool,
         since_ms: Optional[int] = None) -> List[Step]:
    """The action of every cell, given its runs (by config hash) in the store. The first cell of each
    training group trains; the others evaluate its model, or wait while a live worker trains it.
    With ``force``, FINISHED runs started before ``since_ms`` (the invocation) do not count as done."""
    steps, trainer_of = [], {}
    live_trainings = {r.data.tags.get("training_hash") for rs in runs.values() for r in rs if tracking.is_live(r)}
    for cell in ordered(grid.cells):
        mine = runs.get(cell.config_hash, [])
        done = [r for r in mine if r.info.status == "FINISHED"
                and (not force or since_ms is not None and r.info.start_time >= since_ms)]
        stale = [r for r in mine if r.info.status == "RUNNING" and not tracking.is_live(r)]
        live = [r for r in mine if tracking.is_live(r)]
        failed = [r for r in mine if r.info.status in ("FAILED", "KILLED")]
        if cell.trains:
            trainer_of.setdefault(cell.training_hash, cell.name)
        shares = cell.trains and trainer_of[cell.training_hash] != cell.name
        complete = cell.trains and cell.training.status().state is State.COMPLETE
        if done:
            steps.append(Step(cell, Action.SKIP, f"done (run {done[-1].info.run_id[:8]})"))
        elif live:
            beat = time.time() - float(live[0].data.tags.get("heartbeat", 0))
            steps.append(Step(cell, Action.WAIT, f"run {live[0].info.run_id[:8]} of worker "
                              f"{live[0].data.tags.get('worker', '?')}: last heartbeat {beat:.0f} s ago, taken over "
                              f"if silent for {tracking.STALE_AFTER_S:.0f} s", live[0].info.run_id))
        elif rerun_failed and not failed and not stale:
            steps.append(Step(cell, Action.SKIP, "not failed"))
        elif stale:
            steps.append(Step(cell, Action.RESUME, f"resume run {stale[-1].info.run_id[:8]} left by a dead worker",
                              stale[-1].info.run_id))
        elif not cell.trains:
            steps.append(Step(cell, Action.EVALUATE_MAPS, f"score maps in {cell.cfg.maps}"))
        elif complete:
            steps.append(Step(cell, Action.EVALUATE, "training already complete"))
        elif shares and cell.training_hash in live_trainings:
            steps.append(Step(cell, Action.WAIT, f"waits for the training of {trainer_of[cell.training_hash]}"))
        elif shares:
            steps.append(Step(cell, Action.EVALUATE, f"model of {trainer_of[cell.training_hash]}"))
        else:
            steps.append(Step(cell, Action.TRAIN, "new training"))
    return steps


def missing_by_cell(steps: List[Step], check: preflight.Preflight) -> Dict[str, List[preflight.Missing]]:
    """What each cell that will run needs and this machine lacks (``segtricks.runners.preflight``)."""
    return {s.cell.name: check.missing(s.cell.cfg, trains=s.cell.trains and
                                       s.cell.training.status().state is not State.COMPLETE)
            for s in steps if s.action is not Action.SKIP}


def print_plan(grid: Grid, steps: List[Step], missing: Dict[str, List[preflight.Missing]],
               downloads: Dict[str, str]) -> None:
    trainings = {s.cell.training_hash for s in steps if s.cell.trains}
    print(f"grid {grid.name} ({grid.path}): {len(steps)} cells, {len(trainings)} trainings")
    width = max(len(s.cell.name) for s in steps)
    for s in steps:
        training = f"train {s.cell.training_hash[:12]} ({s.cell.training.status()})" if s.cell.trains else "maps"
        fails = ", ".join(m.what for m in missing.get(s.cell.name, []))
        print(f"  {s.cell.name:<{width}}  {s.cell.config_hash[:12]}  {training:<40}  {s.action.value:<14} {s.reason}"
              + (f"  will fail: missing {fails}" if fails else ""))
    if any(missing.values()):
        print(preflight.report(missing).replace("; nothing was run:", ":"))
    for what, where in downloads.items():
        print(f"  {what}: not on this machine; the run downloads it from {where}")


def warn_disk(steps: List[Step], root: Path) -> None:
    """Say before the grid starts when its evaluation caches will not fit (``preflight.disk_warning``)."""
    line = preflight.disk_warning([s.cell for s in steps], {s.cell.name: s.action.value for s in steps}, Path(root))
    if line:
        print(line, file=sys.stderr)


def dry_run(grid: Grid, uri: str, args: argparse.Namespace) -> int:
    """``--dry-run``: the plan against the store as it is, changing nothing. No store, experiment or
    run is created (an absent store or experiment plans every cell as new) and no weights are
    downloaded. With ``--estimate``, each cell's time, memory and disk (``segtricks.runners.estimate``)."""
    path = tracking.sqlite_path(uri)
    runs: Dict[str, list] = {}
    exp_id = None
    if path is None or path.is_file():  # opening an absent SQLite store would create it
        store = tracking.Store(uri)
        exp_id = store.experiment(grid.name, create=False)
        runs = store.runs_by_hash(exp_id) if exp_id is not None else {}
    if exp_id is None:
        print(f"(no experiment {grid.name!r} in {uri}: no cell has a run yet)")
    since_ms = int(time.time() * 1000) if args.force else None
    steps = plan(grid, runs, args.force, args.rerun_failed, since_ms)
    check = preflight.Preflight(download=False)
    print_plan(grid, steps, missing_by_cell(steps, check), check.downloads)
    actions = {s.cell.name: s.action.value for s in steps}
    if args.estimate:
        est = estimate.estimate_grid([s.cell for s in steps], actions, resolve_device(args.device),
                                     args.estimate_steps, store_exists=path is None or path.is_file())
        print(estimate.format_estimate(est, estimate.free_bytes(Path(args.output_root))))
    else:
        warn_disk(steps, Path(args.output_root))
    return 0


def cell_tags(grid: Grid, cell: Cell) -> Dict[str, str]:
    return {"grid": grid.name, "cell": cell.name, "backbone": cell.cfg.backbone.name,
            "tricks": ",".join(cell.cfg.tricks) or "none", "eval_protocol": ",".join(cell.cfg.eval_protocols),
            "config_hash": cell.config_hash,
            "training_hash": cell.training_hash, "mlflow.runName": cell.name}


def log_samples(run: tracking.RunLog, cell: Cell, ref: DatasetRef, samples: list) -> None:
    """Keep the evaluation's first images with this cell's predictions: ``samples/<dataset>.npz``
    (longer side ≤ SAMPLE_SIDE px; what analysis' qualitative figures read) and a figure of four."""
    if not samples:
        return
    ids, images, gts, preds = [], [], [], []
    for image_id, image, gt, pred in samples:
        scale = min(1.0, SAMPLE_SIDE / max(image.shape[-2:]))
        size = [max(1, round(v * scale)) for v in image.shape[-2:]]
        ids.append(image_id)
        images.append((F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0] * 255)
                      .round().byte().permute(1, 2, 0).numpy())
        preds.append((F.interpolate(pred[None, None].float(), size=size, mode="bilinear")[0, 0] * 255)
                     .round().byte().numpy())
        gts.append(np.zeros(size, bool) if gt is None else
                   F.interpolate(gt[None, None].float(), size=size, mode="nearest")[0, 0].bool().numpy())
    run.log_bytes(f"{ref.name}.npz", lambda path: np.savez_compressed(
        path, ids=np.array(ids), **{f"image_{i}": a for i, a in enumerate(images)},
        **{f"gt_{i}": a for i, a in enumerate(gts)}, **{f"pred_{i}": a for i, a in enumerate(preds)}), "samples")
    first = samples[:4]
    fig = figures.sample_predictions([s[0] for s in first], [s[1] for s in first], [s[2] for s in first],
                                     [s[3] for s in first], f"{cell.name} on {ref.name}")
    run.log_figure(fig, f"predictions_{ref.name}.png")
    figures.close(fig)


def execute(store: tracking.Store, step: Step, run: tracking.RunLog, device: torch.device) -> Dict[str, float]:
    """Train (or reuse a training), evaluate on every eval dataset, log everything to ``run``."""
    cell, cfg = step.cell, step.cell.cfg
    run.log_config(cfg, params=step.action is not Action.RESUME)
    if cell.trains:
        training = cell.training
        trains = run.tags().get("role") == "train"  # a resumed trainer stays the trainer
        if not trains and training.status().state is not State.COMPLETE:
            run.set_tags({"role": "train"})
            trains = True
        elif not trains:
            trainer = [r for r in store.runs(run.experiment_id(),
                                             f"tags.training_hash = '{cell.training_hash}' and tags.role = 'train'")
                       if r.info.run_id != run.id]
            if trainer:
                run.set_tags({"model_from_run": trainer[0].info.run_id})
        status = training.run([EpochLogger(run)] if trains else [])
        if trains:
            run.log_epochs(training.history())
        run.set_tags({"weights": status.weights_id})
        model = training.model(device)
    else:
        run.set_tags({"weights": f"maps:{cfg.maps}"})
    results: Dict[str, float] = {}
    post = post_trick_names(cfg.tricks)
    # Our protocol always; with eval_protocol "reference" also the reference's, under
    # <dataset>.reference.<metric> and records/<dataset>.reference.csv
    protocols = cfg.eval_protocols
    for ref in cfg.eval:
        for protocol in protocols:
            keep = SAMPLES if protocol == "ours" else 0
            if cell.trains:
                ev = evaluate_model(model, cfg, ref, post, device, keep_samples=keep, protocol=protocol,
                                    cache_dir=cell.training.dir / "predictions", keys_dir=cell.training.keys_dir)
            else:
                ev = evaluate_maps(Path(cfg.maps) / ref.name, cfg, ref, post, keep_samples=keep, protocol=protocol)
            name = ref.name if protocol == "ours" else f"{ref.name}.reference"
            results.update({f"{name}.{k}": v for k, v in ev.results().items()})
            run.log_text(ev.records().to_csv(index=False), f"records/{name}.csv")
            if ev.skipped:
                run.log_text(skipped_csv(ev.skipped), f"records/{name}.skipped.csv")
                tqdm.write(f"cell {cell.name}: {describe_skipped(name, ev.skipped)} (listed in the run's "
                           f"records/{name}.skipped.csv)")
            log_samples(run, cell, ref, ev.samples)
    run.log_metrics(results)
    return results


def run_cell(store: tracking.Store, exp_id: str, step: Step, run: tracking.RunLog, dev: torch.device,
             force: bool) -> dict:
    """Execute one claimed cell under its heartbeat: its summary row. A failure is recorded FAILED and
    the grid goes on; a full disk is raised, since every later cell would fail the same way."""
    with run.heartbeat():
        try:
            results = execute(store, step, run, dev)
            run.finish()
            if force:
                store.supersede(exp_id, run, step.cell.config_hash)
            return {"cell": step.cell.name, "status": "FINISHED", "run_id": run.id, **results}
        except Exception as exc:
            try:
                run.fail()
            except Exception:  # the store itself failed: the run goes stale and is resumed later
                pass
            if isinstance(exc, NoSpaceError):
                raise
            tqdm.write(f"cell {step.cell.name} FAILED: {type(exc).__name__}: {exc}")
            return {"cell": step.cell.name, "status": "FAILED", "run_id": run.id,
                    "note": f"{type(exc).__name__}: {exc}"[:200]}


def run_grid(grid: Grid, uri: str, force: bool = False, rerun_failed: bool = False, fail_fast: bool = False,
             device: str = "auto", since_ms: Optional[int] = None) -> List[dict]:
    """One worker's pass(es) over the grid until no cell is left that it may take. ``since_ms``
    (default: now) is when the ``--force`` invocation began: runs finished before it are history."""
    store = tracking.Store(uri)
    exp_id = store.experiment(grid.name, grid.description)
    dev = resolve_device(device)
    summary: Dict[str, dict] = {}
    announced = set()  # (cell, run id) of the waits already reported
    if force and since_ms is None:
        since_ms = int(time.time() * 1000)
    bar = None  # one bar for the whole pass: it counts the cells this worker ran, not the plans
    try:
        while True:
            by_hash = store.runs_by_hash(exp_id)
            # with --force, a cell rerun by this invocation has a FINISHED run since since_ms: plan skips it
            steps = plan(grid, by_hash, force, rerun_failed, since_ms)
            for s in steps:
                if s.action is Action.SKIP and s.cell.name not in summary:
                    done = [r for r in by_hash.get(s.cell.config_hash, []) if r.info.status == "FINISHED"]
                    metrics = done[-1].data.metrics if done else {}  # a skipped cell still shows its result
                    summary[s.cell.name] = {"cell": s.cell.name, "status": "skipped", "note": s.reason, **metrics}
            todo = [s for s in steps if s.action not in (Action.SKIP, Action.WAIT) and s.cell.name not in summary]
            if not todo:
                waits = [s for s in steps if s.action is Action.WAIT]
                for s in waits:  # say once what we wait for, not every 5 s
                    if (s.cell.name, s.run_id) not in announced:
                        announced.add((s.cell.name, s.run_id))
                        tqdm.write(f"waiting for cell {s.cell.name}: {s.reason}")
                if waits:
                    time.sleep(5)  # other workers hold cells or train what they share; wait for them
                    continue
                break
            if bar is None:
                bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell")
            step = todo[0]  # one cell, then plan again: what other workers did meanwhile changes what is left
            bar.set_postfix_str(step.cell.name)
            if step.action is Action.RESUME:
                run = store.run(step.run_id)
            else:
                run = store.claim(exp_id, step.cell.name, cell_tags(grid, step.cell), since_ms)
                if run is None:
                    # another worker claimed this cell first; this plan predates its claim, and a cell that
                    # shares the training it now trains would train it again: plan again
                    continue
            summary[step.cell.name] = row = run_cell(store, exp_id, step, run, dev, force)
            if row["status"] == "FAILED" and fail_fast:
                return list(summary.values())
            bar.update()
    finally:  # closed before any error is printed, so that the message starts its own line
        if bar is not None:
            bar.close()
    return list(summary.values())


@dataclass
class GroupJob:
    """One Slurm array task's work: some cells of a grid (one training group), and where to log."""

    grid: str  # grid name, or an absolute YAML path
    flags: List[str]
    output_root: str  # absolute
    uri: str  # absolute
    cells: List[str]
    force: bool
    rerun_failed: bool
    since_ms: Optional[int]


class GroupTask(submitit.helpers.Checkpointable):
    """A Slurm array task: run one training group's cells (train once, evaluate each). On preemption
    or time-out submitit requeues it with the same ``GroupJob``; the requeued task takes its earlier
    attempt's run as its own (same ``slurm_job`` tag) and resumes the training from ``last.pt``."""

    def __call__(self, job: GroupJob) -> List[dict]:
        grid = load_grid(job.grid, job.flags, job.output_root)
        grid = dataclasses.replace(grid, cells=[c for c in grid.cells if c.name in job.cells])
        return run_grid(grid, job.uri, job.force, job.rerun_failed, since_ms=job.since_ms)


def training_groups(steps: List[Step]) -> List[List[str]]:
    """Cell names per training group (maps cells alone) that still has a cell to run."""
    groups: Dict[str, List[Step]] = {}
    for s in steps:
        groups.setdefault(s.cell.training_hash if s.cell.trains else s.cell.config_hash, []).append(s)
    return [[s.cell.name for s in group] for group in groups.values()
            if any(s.action is not Action.SKIP for s in group)]


def submit_grid(grid: Grid, args, uri: str, opts: slurm.SlurmOptions) -> int:
    """``--launcher slurm``: one array task per training group with work (module docstring of
    segtricks.runners.slurm); prints the job ids, and with ``--wait`` follows them and prints the summary."""
    slurm.preflight(opts, {"MLflow store": tracking.sqlite_path(uri)})
    store = tracking.Store(uri)
    exp_id = store.experiment(grid.name, grid.description)  # before any task starts
    since_ms = int(time.time() * 1000) if args.force else None
    steps = plan(grid, store.runs_by_hash(exp_id), args.force, args.rerun_failed, since_ms)
    missing = missing_by_cell(steps, preflight.Preflight())
    if any(missing.values()):
        print(f"error: {preflight.report(missing)}", file=sys.stderr)
        return 2
    warn_disk(steps, Path(args.output_root))
    groups = training_groups(steps)
    if not groups:
        print(f"grid {grid.name}: nothing to submit, every cell is done")
        print_summary(grid, rows_from_store(store, exp_id, grid))
        return 0
    ref = args.grid if not args.grid.endswith((".yaml", ".yml")) else str(Path(args.grid).resolve())
    jobs = [GroupJob(ref, list(args.set), str(Path(args.output_root).resolve()), uri, cells, args.force,
                     args.rerun_failed, since_ms) for cells in groups]
    submitted = slurm.executor(opts, f"segtricks-{grid.name}").map_array(GroupTask(), jobs)
    print(f"grid {grid.name}: submitted {len(submitted)} Slurm array task(s), one per training group "
          f"(logs: {opts.folder}/<job id>/)")
    for job, cells in zip(submitted, groups):
        print(f"  {job.job_id}  {', '.join(cells)}")
    if not opts.wait:
        print("Results reach the MLflow store as tasks finish; rerunning this command later submits only "
              "what is left, and `python -m analysis.make_tables` reads what is done.")
        return 0
    errors = slurm.wait_for(submitted, f"grid {grid.name}")
    rows = rows_from_store(store, exp_id, grid)
    print_summary(grid, rows)
    for error in filter(None, errors):
        print(f"error: {error}", file=sys.stderr)
    failed = sum(r["status"] != "FINISHED" for r in rows)
    print(f"\n{len(rows)} cells: {len(rows) - failed} finished, {failed} not. "
          f"Browse: mlflow ui --backend-store-uri {uri}")
    return 1 if failed or any(errors) else 0


def rows_from_store(store: tracking.Store, exp_id: str, grid: Grid) -> List[dict]:
    """Summary rows from each cell's newest run in the store (what Slurm tasks logged)."""
    by_hash = store.runs_by_hash(exp_id)
    rows = []
    for cell in grid.cells:
        runs = by_hash.get(cell.config_hash, [])
        if not runs:
            rows.append({"cell": cell.name, "status": "no run"})
            continue
        run = runs[-1]
        rows.append({"cell": cell.name, "status": run.info.status, "run_id": run.info.run_id, **run.data.metrics})
    return rows


def print_summary(grid: Grid, rows: List[dict]) -> None:
    keys = sorted({k for r in rows for k in r if k.split(".")[-1] in SUMMARY_METRICS and "." in k})
    header = ["cell", "status", *keys, "run"]
    lines = [header] + [[r["cell"], r["status"], *[f"{r[k]:.3f}" if k in r else "" for k in keys],
                         (r.get("run_id") or "")[:8] + (f" {r['note']}" if r.get("note") else "")] for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print(f"\nsummary of grid {grid.name}:")
    for line in lines:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths)))


def spawn_workers(argv: List[str], n: int) -> int:
    """Start n copies of this command (without --workers), one GPU each when several are present."""
    gpus = torch.cuda.device_count()
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        procs.append(subprocess.Popen([sys.executable, "-m", "segtricks.ablate", *argv], env=env))
    return max(p.wait() for p in procs)


def strip_workers(argv: List[str]) -> List[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def print_next_steps(grid: Grid, uri: str, exp_id: str) -> None:
    """What a user does with a finished grid: the tables, and the runs in the MLflow UI (a direct link
    to the grid's runs: the UI's home page opens on its GenAI view)."""
    print("Next:")
    print(f"  python -m analysis.make_tables --grid {grid.name}" + ("" if uri == tracking.tracking_uri() else
                                                             f" --tracking-uri {uri}"))
    if uri.startswith("sqlite:"):
        print(f"  mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000/#/experiments/{exp_id}")
    else:
        print(f"  the runs: {uri.rstrip('/')}/#/experiments/{exp_id}")


def launch(args: argparse.Namespace, argv: List[str], opts: Optional[slurm.SlurmOptions]) -> int:
    """What ``python -m segtricks.ablate`` does once its arguments and grid are known to be valid."""
    grid = load_grid(args.grid, args.set, args.output_root)
    uri = tracking.tracking_uri(args.tracking_uri)
    error = preflight.output_root_error(args.output_root)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            return dry_run(grid, uri, args)
        if opts is not None:
            return submit_grid(grid, args, uri, opts)
        store = tracking.Store(uri)
        exp_id = store.experiment(grid.name, grid.description)  # before any worker starts
        since_ms = int(time.time() * 1000) if args.force else None
        steps = plan(grid, store.runs_by_hash(exp_id), args.force, args.rerun_failed, since_ms)
        missing = missing_by_cell(steps, preflight.Preflight())
        if any(missing.values()):
            print(f"error: {preflight.report(missing)}", file=sys.stderr)
            return 2
        warn_disk(steps, args.output_root)
        if args.workers > 1:
            return spawn_workers(strip_workers(argv), args.workers)
        rows = run_grid(grid, uri, args.force, args.rerun_failed, args.fail_fast, args.device, since_ms)
    except slurm.LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        return tracking.exit_on_environment_error(exc, uri)
    print_summary(grid, rows)
    failed = sum(r["status"] == "FAILED" for r in rows)
    print(f"\n{len(rows)} cells: {sum(r['status'] == 'FINISHED' for r in rows)} run, "
          f"{sum(r['status'] == 'skipped' for r in rows)} skipped, {failed} failed.")
    print_next_steps(grid, uri, exp_id)
    return 1 if failed else 0
