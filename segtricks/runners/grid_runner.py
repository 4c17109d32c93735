"""One worker of a grid: claim a cell through the tracking store, train (or reuse a training), evaluate
and log it as an MLflow run, then plan again, until no cell is left that it may take.

Cells whose config hash already has a FINISHED run are skipped; a run left RUNNING by a killed
worker is resumed (training continues from its last checkpoint); a cell that raises is marked FAILED
with its traceback as an artifact and the grid goes on. Cells that differ only in post-processing
share one ``Training`` (``<output-root>/trainings/<training hash>``); the run that trains it is tagged
``role=train`` and the others ``model_from_run=<its run id>``. Every launcher runs this loop: in this
process, in local worker processes, or in Slurm array tasks (``segtricks.launchers.launch``); workers
running it at once claim cells through the store. With seeds, each replica of a cell is a run of its
own, named as the cell and tagged with its seed; this loop knows replicas by ``Cell.id``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from mlflow.entities import DatasetInput
from tqdm.auto import tqdm

from segtricks.runtime.device import FP32, precision_of, resolve_device
from segtricks.engine.hooks import EpochLogger
from segtricks.engine.training import State
from segtricks.evaluation.saliency_maps import evaluate_maps
from segtricks.evaluation.method_evaluation import evaluate_method
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.methods.registry import build_method, training_recipe
from segtricks.evaluation.protocols import get_protocol
from segtricks.files import NoSpaceError
from segtricks.data.pseudo_masks import PseudoMaskFolder
from segtricks.inference.mlflow_model import log_trained_model, logged_model_id
from segtricks.inference.pseudo_labels import export_pseudo_masks
from segtricks.method.tricks import post_trick_names
from segtricks.runners.plan import Action, Step, plan, summary_row
from segtricks.config.grid import Cell, Grid
from segtricks.tracking import artifacts, tags
from segtricks.tracking.dataset_inputs import cell_inputs, pseudo_mask_input
from segtricks.tracking.description import cell_description
from segtricks.tracking.store import RunLog, Store
from segtricks.tracking.system_metrics import system_metrics

SAMPLES = 16  # first images of each evaluation dataset kept with a run, for qualitative figures


def cell_tags(grid: Grid, cell: Cell) -> Dict[str, str]:
    """The tags a cell's run is created with: what finds it again (``segtricks.tracking.tags``)."""
    return {tags.GRID: grid.name, tags.CELL: cell.name, tags.SEED: str(cell.cfg.seed),
            tags.BACKBONE: cell.cfg.backbone.name, tags.TRICKS: ",".join(cell.cfg.tricks) or "none",
            tags.EVAL_PROTOCOL: ",".join(cell.cfg.eval_protocols),
            tags.CONFIG_HASH: cell.config_hash, tags.TRAINING_HASH: cell.training_hash, tags.RUN_NAME: cell.name}


def current_trainer(store: Store, run: RunLog, cell: Cell) -> Optional[str]:
    """The run that carries ``cell``'s training (tagged ``role=train``), newest first, or None: not
    superseded, and of another cell, since this cell's own earlier runs are what this run replaces."""
    found = [r for r in store.runs(run.experiment_id(), {tags.TRAINING_HASH: cell.training_hash,
                                                        tags.ROLE: tags.ROLE_TRAIN})
             if r.info.run_id != run.id and tags.SUPERSEDED_BY not in r.data.tags
             and r.data.tags.get(tags.CONFIG_HASH) != cell.config_hash and r.info.status in ("RUNNING", "FINISHED")]
    return found[-1].info.run_id if found else None


def distilled_input(cell: Cell, device: torch.device) -> DatasetInput:
    """The pseudo-masks a distillation cell trains on, as its run's training input. A finished training
    names the export it trained on; any other is about to train on the teacher's current model's masks,
    exported now unless on disk (``export_pseudo_masks``)."""
    cfg = cell.cfg
    folder = PseudoMaskFolder(Path(cfg.distill.masks))
    record = folder.completion() if cell.training.status().state is State.COMPLETE else None
    if record is None:
        record = export_pseudo_masks(cell.teacher.name, cell.teacher.cfg, cell.teacher.training, cfg.data.train,
                                     cfg.distill.threshold, folder, device)
    return pseudo_mask_input(folder, record)


def execute(store: Store, step: Step, run: RunLog, device: torch.device) -> Dict[str, float]:
    """Train (or reuse a training), evaluate on every eval dataset under every protocol of the config,
    log everything to ``run``."""
    cell, cfg = step.cell, step.cell.cfg
    run.log_config(cfg, params=step.action is not Action.RESUME)
    inputs, evaluated = cell_inputs(cfg, cell.trains)
    run.log_inputs(inputs)
    trains, model_from, model_id = False, None, None  # whether this run carries the cell's training; else the run that does
    method = None  # the Method that predicts image by image (training-free, or FOUND's trained model)
    if cell.trains:
        training = cell.training
        trains = run.tags().get(tags.ROLE) == tags.ROLE_TRAIN  # a resumed trainer stays the trainer
        trainer = None if trains else current_trainer(store, run, cell)
        if not trains and (training.status().state is not State.COMPLETE or trainer is None):
            # it trains, or (a --force rerun, whose trainer run it supersedes) it carries the finished
            # training: its curves and its model, so that the cell's current run shows them
            run.set_tags({tags.ROLE: tags.ROLE_TRAIN})
            trains = True
        elif not trains:
            model_from = trainer
            run.set_tags({tags.MODEL_FROM_RUN: model_from})
        if cell.teacher is not None:  # a distillation cell: its teacher's pseudo-masks are its training masks
            run.log_inputs([distilled_input(cell, device)])
        with system_metrics(run, on=trains and cfg.tracking.system_metrics):
            status = training.run([EpochLogger(run)] if trains else [])
        if trains:
            run.log_epochs(training.history())
            model_id = log_trained_model(run, training)  # once: a resumed trainer that logged it leaves it
        weights = status.weights_id
        model = training.model(device)
        method = training_recipe(cfg).as_method(cfg, model)  # FOUND: evaluated image by image
        precision = precision_of(device).name
    elif cfg.maps is None:  # a training-free method, built once for every dataset
        method = build_method(cfg, device)
        weights, precision = method.backbone.weights_id, FP32.name  # methods run their backbone in float32
    else:
        weights, precision = f"maps:{cfg.maps}", None
    run.set_tags({tags.WEIGHTS: weights, **({tags.PRECISION: precision} if precision else {})})
    by_dataset: Dict[str, Dict[str, float]] = {ref.name: {} for ref in cfg.eval}
    post = post_trick_names(cfg.tricks)
    for ref in cfg.eval:
        for name in cfg.eval_protocols:  # each protocol's metrics and records under its own key
            protocol = get_protocol(name)
            key = protocol.dataset_key(ref.name)
            keep = SAMPLES if protocol.keeps_samples else 0
            if cell.trains and method is None:
                ev = evaluate_model(model, cfg, ref, post, device, keep_samples=keep, protocol=protocol,
                                    cache_dir=cell.training.folder.predictions, keys_dir=cell.training.folder.keys)
            elif cfg.maps is None:  # a training-free method, or a trained one evaluated image by image
                ev = evaluate_method(method, cfg, ref, post, device, keep_samples=keep)
            else:
                ev = evaluate_maps(Path(cfg.maps) / ref.name, cfg, ref, post, keep_samples=keep, protocol=protocol)
            by_dataset[ref.name].update({f"{key}.{k}": v for k, v in ev.results().items()})
            artifacts.log_records(run, key, ev.records(), ev.skipped)
            artifacts.log_curves(run, key, *ev.f_curves())  # the paired statistics' max_fbeta evidence
            if ev.skipped:
                tqdm.write(f"cell {cell.id}: {artifacts.describe_skipped(key, ev.skipped)} (listed in the run's "
                           f"{artifacts.skipped_path(key)})")
            if protocol.keeps_samples:
                artifacts.log_samples(run, key, ev.samples, f"{cell.id} on {ref.name}")
    if model_from is not None:  # looked up last: its trainer logs the model just after the training
        model_id = logged_model_id(store.run(model_from))
        if model_id is not None:
            run.log_model_input(model_id)
    for name, metrics in by_dataset.items():  # each linked to the dataset and the model, on the model's page
        run.log_metrics(metrics, model_id=model_id, dataset=evaluated[name])
    results = {k: v for metrics in by_dataset.values() for k, v in metrics.items()}
    run.describe(cell_description(cell, weights, results, trains, model_from, run.experiment_id()))
    return results


def run_cell(store: Store, exp_id: str, step: Step, run: RunLog, dev: torch.device, force: bool) -> dict:
    """Execute one claimed cell under its heartbeat: its summary row. A failure is recorded FAILED and
    the grid goes on; a full disk is raised, since every later cell would fail the same way."""
    with run.heartbeat():
        try:
            results = execute(store, step, run, dev)
            run.finish()
            if force:
                store.supersede(exp_id, run, step.cell.config_hash)
            return summary_row(step.cell, "FINISHED", run_id=run.id, **results)
        except KeyboardInterrupt:  # Ctrl-C: not the cell's failure; the rerun trains on from the last checkpoint
            run.kill("interrupted (Ctrl-C); rerunning the same command resumes the training from its last checkpoint")
            raise
        except Exception as exc:
            try:
                run.fail()
            except Exception:  # the store itself failed: the run goes stale and is resumed later
                pass
            if isinstance(exc, NoSpaceError):
                raise
            tqdm.write(f"cell {step.cell.id} FAILED: {type(exc).__name__}: {exc}")
            return summary_row(step.cell, "FAILED", run_id=run.id, note=f"{type(exc).__name__}: {exc}"[:200])


def run_grid(grid: Grid, uri: str, force: bool = False, rerun_failed: bool = False, fail_fast: bool = False,
             device: str = "auto", since_ms: Optional[int] = None) -> List[dict]:
    """One worker's pass(es) over the grid until no cell is left that it may take: a summary row per
    cell. ``since_ms`` (default: now) is when the ``--force`` invocation began: runs finished before
    it are history."""
    store = Store(uri)
    exp_id = store.experiment(grid.name, grid.description)
    dev = resolve_device(device)
    summary: Dict[str, dict] = {}  # cell id → its row
    announced = set()  # (cell id, run id) of the waits already reported
    if force and since_ms is None:
        since_ms = int(time.time() * 1000)
    bar = None  # one bar for the whole pass: it counts the cells this worker ran, not the plans
    try:
        while True:
            by_hash = store.runs_by_hash(exp_id)
            # with --force, a cell rerun by this invocation has a FINISHED run since since_ms: plan skips it
            steps = plan(grid, by_hash, force, rerun_failed, since_ms)
            for s in steps:
                for run_id in s.abandoned:
                    store.run(run_id).kill(f"left RUNNING by a dead worker (a killed --force rerun?) while cell "
                                           f"{s.cell.id} had a finished run; closed by a later invocation")
                if s.action is Action.SKIP and s.cell.id not in summary:
                    done = [r for r in by_hash.get(s.cell.config_hash, []) if r.info.status == "FINISHED"]
                    metrics = done[-1].data.metrics if done else {}  # a skipped cell still shows its result
                    summary[s.cell.id] = summary_row(s.cell, "skipped", note=s.reason, **metrics)
            todo = [s for s in steps if s.action not in (Action.SKIP, Action.WAIT) and s.cell.id not in summary]
            if not todo:
                waits = [s for s in steps if s.action is Action.WAIT]
                for s in waits:  # say once what we wait for, not every 5 s
                    if (s.cell.id, s.run_id) not in announced:
                        announced.add((s.cell.id, s.run_id))
                        tqdm.write(f"waiting for cell {s.cell.id}: {s.reason}")
                if waits:
                    time.sleep(5)  # other workers hold cells or train what they share; wait for them
                    continue
                break
            if bar is None:
                bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell")
            step = todo[0]  # one cell, then plan again: what other workers did meanwhile changes what is left
            bar.set_postfix_str(step.cell.id)
            if step.action is Action.RESUME:  # two workers may find the same dead worker's run
                run = store.take_over(step.run_id)
            else:
                run = store.claim(exp_id, step.cell.name, cell_tags(grid, step.cell), since_ms)
            if run is None:
                # another worker claimed this cell (or took the dead worker's run over) first; this plan
                # predates it, and a cell that shares the training it now trains would train it again: plan again
                continue
            summary[step.cell.id] = row = run_cell(store, exp_id, step, run, dev, force)
            if row["status"] == "FAILED" and fail_fast:
                return list(summary.values())
            bar.update()
    finally:  # closed before any error is printed, so that the message starts its own line
        if bar is not None:
            bar.close()
    return list(summary.values())
