"""Run every cell of a grid as an MLflow run: ``python -m segtricks.ablate --grid table3``.

Cells whose config hash already has a FINISHED run are skipped; a run left RUNNING by a killed
worker is resumed (training continues from its last checkpoint); a cell that raises is marked FAILED
with its traceback as an artifact and the grid goes on. Cells that differ only in post-processing
share one training (trainings live under ``<output-root>/trainings/<training hash>``); the cell
that trained is tagged ``role=train`` and the others ``model_from_run=<its run id>``.
``--workers N`` starts N worker processes that claim cells through the tracking store.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from segtricks import checkpoint, tracking
from segtricks.config import ConfigError, DatasetRef, resolved_yaml, to_dict
from segtricks.evaluation import evaluate_maps, evaluate_model
from segtricks.grid import Cell, Grid, load_grid
from segtricks.model import load_trained
from segtricks.tricks import post_trick_names
from segtricks.train import parse_overrides
from segtricks.trainer import resolve_device, train
from segtricks import figures

SUMMARY_METRICS = ("iou", "max_fbeta", "corloc")
SAMPLES = 16  # first images of each evaluation dataset kept with a run, for qualitative figures
SAMPLE_SIDE = 192


@dataclass
class Step:
    """What one invocation will do with a cell."""

    cell: Cell
    action: str  # train+evaluate | evaluate | evaluate-maps | resume | skip
    reason: str
    run_id: Optional[str] = None


def post_tricks(cell: Cell) -> List[str]:
    return post_trick_names(cell.cfg.tricks)


def training_complete(cell: Cell) -> bool:
    last = Path(cell.cfg.output_dir) / "last.pt"
    return last.is_file() and checkpoint.load(last)["epoch"] + 1 >= cell.cfg.optim.epochs


def ordered(cells: List[Cell]) -> List[Cell]:
    """Group cells by training; in each group the cell without post-processing trains first."""
    groups: Dict[str, List[Cell]] = {}
    for c in cells:
        groups.setdefault(c.training_hash if c.trains else c.config_hash, []).append(c)
    out = []
    for group in groups.values():
        out += sorted(group, key=lambda c: (len(post_tricks(c)) > 0, cells.index(c)))
    return out


def plan(grid: Grid, runs: Dict[str, list], force: bool, rerun_failed: bool) -> List[Step]:
    steps, trainer_of = [], {}
    for cell in ordered(grid.cells):
        mine = runs.get(cell.config_hash, [])
        done = tracking.finished_runs(mine)
        stale = [r for r in mine if r.info.status == "RUNNING" and not tracking.is_live(r)]
        live = [r for r in mine if tracking.is_live(r)]
        failed = [r for r in mine if r.info.status in ("FAILED", "KILLED")]
        if cell.trains and cell.training_hash not in trainer_of:
            trainer_of[cell.training_hash] = cell.name
        shares = cell.trains and trainer_of[cell.training_hash] != cell.name
        if done and not force:
            steps.append(Step(cell, "skip", f"done (run {done[-1].info.run_id[:8]})"))
        elif live:
            steps.append(Step(cell, "skip", f"running elsewhere ({live[0].data.tags.get('worker', '?')})"))
        elif rerun_failed and not failed and not stale:
            steps.append(Step(cell, "skip", "not failed"))
        elif stale:
            steps.append(Step(cell, "resume", f"resume run {stale[-1].info.run_id[:8]} left by a dead worker",
                              stale[-1].info.run_id))
        elif not cell.trains:
            steps.append(Step(cell, "evaluate-maps", f"score maps in {cell.cfg.maps}"))
        elif shares or training_complete(cell):
            steps.append(Step(cell, "evaluate", f"model of {trainer_of[cell.training_hash]}"
                              if shares else "training already complete"))
        else:
            steps.append(Step(cell, "train+evaluate", "new training"))
    return steps


def print_plan(grid: Grid, steps: List[Step]) -> None:
    trainings = {s.cell.training_hash for s in steps if s.cell.trains}
    print(f"grid {grid.name} ({grid.path}): {len(steps)} cells, {len(trainings)} trainings")
    width = max(len(s.cell.name) for s in steps)
    for s in steps:
        print(f"  {s.cell.name:<{width}}  {s.cell.config_hash[:12]}  train {s.cell.training_hash[:12]}  "
              f"{s.action:<14} {s.reason}")


def cell_tags(grid: Grid, cell: Cell) -> Dict[str, str]:
    return {"grid": grid.name, "cell": cell.name, "backbone": cell.cfg.backbone.name,
            "tricks": ",".join(cell.cfg.tricks) or "none", "eval_protocol": cell.cfg.eval_protocol,
            "config_hash": cell.config_hash,
            "training_hash": cell.training_hash, "mlflow.runName": cell.name}


def log_samples(client, run_id: str, cell: Cell, ref: DatasetRef, samples: list) -> None:
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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{ref.name}.npz"
        np.savez_compressed(path, ids=np.array(ids), **{f"image_{i}": a for i, a in enumerate(images)},
                            **{f"gt_{i}": a for i, a in enumerate(gts)}, **{f"pred_{i}": a for i, a in enumerate(preds)})
        client.log_artifact(run_id, str(path), "samples")
    first = samples[:4]
    fig = figures.sample_predictions([s[0] for s in first], [s[1] for s in first], [s[2] for s in first],
                                     [s[3] for s in first], f"{cell.name} on {ref.name}")
    client.log_figure(run_id, fig, f"predictions_{ref.name}.png")
    figures.close(fig)


def training_shared(client, run_id: str) -> bool:
    """Whether this run reuses another run's training (its losses belong to that run)."""
    return "model_from_run" in client.get_run(run_id).data.tags


def execute(client, step: Step, run_id: str, device: torch.device) -> Dict[str, float]:
    """Train (or reuse a training), evaluate on every eval dataset, log everything to ``run_id``."""
    cell, cfg = step.cell, step.cell.cfg
    client.log_text(run_id, resolved_yaml(cfg), "config.yaml")
    client.log_dict(run_id, tracking.environment(), "environment.json")
    if step.action != "resume":
        tracking.log_params(client, run_id, tracking.flatten(to_dict(cfg)))
    results: Dict[str, float] = {}
    post = post_tricks(cell)
    if cell.trains:
        if not training_complete(cell):
            client.set_tag(run_id, "role", "train")
        else:
            trainer = client.search_runs([client.get_run(run_id).info.experiment_id],
                                         f"tags.training_hash = '{cell.training_hash}' and tags.role = 'train'")
            if trainer:
                client.set_tag(run_id, "model_from_run", trainer[0].info.run_id)
        result = train(cfg, on_epoch_end=lambda e, m: tracking.log_metrics(
            client, run_id, {k: v for k, v in m.items() if k != "epoch"}, step=e))
        # A kill between an epoch's checkpoint and its logging loses that epoch's metrics: the
        # checkpoint's history has them, so log every epoch the run does not show yet.
        logged = {m.step for m in client.get_metric_history(run_id, "train.loss")}
        for h in [] if training_shared(client, run_id) else result.history:
            if h["epoch"] not in logged:
                tracking.log_metrics(client, run_id, {k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
        client.set_tag(run_id, "weights", result.weights_id)
        model = load_trained(cfg, result.best_checkpoint).to(device)
    else:
        client.set_tag(run_id, "weights", f"maps:{cfg.maps}")
    # Our protocol always; with eval_protocol "reference" also the reference's, under
    # <dataset>.reference.<metric> and records/<dataset>.reference.csv
    protocols = ("ours", "reference") if cfg.eval_protocol == "reference" else ("ours",)
    for ref in cfg.eval:
        for protocol in protocols:
            keep = SAMPLES if protocol == "ours" else 0
            if cell.trains:
                ev = evaluate_model(model, cfg, ref, post, device, keep_samples=keep, protocol=protocol)
            else:
                ev = evaluate_maps(Path(cfg.maps) / ref.name, cfg, ref, post, keep_samples=keep, protocol=protocol)
            name = ref.name if protocol == "ours" else f"{ref.name}.reference"
            results.update({f"{name}/{k}": v for k, v in ev.results().items()})
            client.log_text(run_id, ev.records().to_csv(index=False), f"records/{name}.csv")
            log_samples(client, run_id, cell, ref, ev.samples)
    tracking.log_metrics(client, run_id, results)
    return results


def run_grid(grid: Grid, uri: str, force: bool = False, rerun_failed: bool = False, fail_fast: bool = False,
             device: str = "auto") -> List[dict]:
    """One worker's pass(es) over the grid until no cell is left that it may take."""
    client = tracking.MlflowClient(uri)
    exp_id = tracking.experiment_id(client, grid.name, grid.description)
    dev = resolve_device(device)
    summary: Dict[str, dict] = {}
    forced = set()
    while True:
        steps = plan(grid, tracking.runs_by_hash(client, exp_id), force, rerun_failed)
        if force:  # --force reruns each cell once per invocation, not forever
            steps = [s if s.cell.name not in forced else Step(s.cell, "skip", "rerun done") for s in steps]
        todo = [s for s in steps if s.action != "skip" and s.cell.name not in summary]
        for s in steps:
            if s.action == "skip" and s.cell.name not in summary and not s.reason.startswith("running"):
                summary[s.cell.name] = {"cell": s.cell.name, "status": "skipped", "note": s.reason}
        if not todo:
            if any(s.reason.startswith("running elsewhere") for s in steps):
                time.sleep(5)  # other workers hold cells; wait for them to finish or die
                continue
            break
        progressed = False
        bar = tqdm(todo, desc=f"grid {grid.name}", unit="cell")
        for step in bar:
            bar.set_postfix_str(step.cell.name)
            if step.action == "evaluate" and not training_complete(step.cell):
                # the training this cell shares is not finished: only the trainer's worker trains it
                trainer_live = [r for r in client.search_runs(
                    [exp_id], f"tags.training_hash = '{step.cell.training_hash}' and attributes.status = 'RUNNING'")
                    if tracking.is_live(r)]
                if trainer_live:
                    continue
            if step.action == "resume":
                run_id = step.run_id
                tracking.set_tags(client, run_id, {"worker": tracking.WORKER, "heartbeat": str(time.time())})
            else:
                run_id = tracking.create_claimed_run(client, exp_id, step.cell.name, cell_tags(grid, step.cell))
                if run_id is None:
                    continue  # another worker claimed this cell first
            forced.add(step.cell.name)
            progressed = True
            with tracking.Heartbeat(client, run_id):
                try:
                    results = execute(client, step, run_id, dev)
                    tracking.finish(client, run_id, ok=True)
                    summary[step.cell.name] = {"cell": step.cell.name, "status": "FINISHED", "run_id": run_id,
                                               **results}
                except Exception as exc:  # any failure of one cell: record it, go on with the grid
                    client.log_text(run_id, traceback.format_exc(), "traceback.txt")
                    tracking.finish(client, run_id, ok=False)
                    summary[step.cell.name] = {"cell": step.cell.name, "status": "FAILED", "run_id": run_id,
                                               "note": f"{type(exc).__name__}: {exc}"[:200]}
                    tqdm.write(f"cell {step.cell.name} FAILED: {type(exc).__name__}: {exc}")
                    if fail_fast:
                        return list(summary.values())
        bar.close()
        if not progressed:  # every remaining cell waits on another worker's training or claim
            time.sleep(5)
    return list(summary.values())


def print_summary(grid: Grid, rows: List[dict]) -> None:
    keys = sorted({k for r in rows for k in r if k.split("/")[-1] in SUMMARY_METRICS and "/" in k})
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


def main(argv: List[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", required=True, help="grid name (experiments/<name>.yaml) or a YAML path")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell")
    ap.add_argument("--dry-run", action="store_true", help="print the cells and what would happen")
    ap.add_argument("--force", action="store_true", help="rerun cells that already have a FINISHED run")
    ap.add_argument("--rerun-failed", action="store_true", help="run only cells whose last run failed")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    ap.add_argument("--tracking-uri", help=f"MLflow store (default $MLFLOW_TRACKING_URI or {tracking.DEFAULT_URI})")
    ap.add_argument("--output-root", default="outputs", help="where trainings keep their checkpoints")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    try:
        grid = load_grid(args.grid, parse_overrides(args.set), args.output_root)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uri = tracking.tracking_uri(args.tracking_uri)
    client = tracking.MlflowClient(uri)
    exp_id = tracking.experiment_id(client, grid.name, grid.description)  # before any worker starts
    if args.dry_run:
        print_plan(grid, plan(grid, tracking.runs_by_hash(client, exp_id), args.force, args.rerun_failed))
        return 0
    if args.workers > 1:
        return spawn_workers(strip_workers(argv), args.workers)
    rows = run_grid(grid, uri, args.force, args.rerun_failed, args.fail_fast, args.device)
    print_summary(grid, rows)
    failed = sum(r["status"] == "FAILED" for r in rows)
    print(f"\n{len(rows)} cells: {sum(r['status'] == 'FINISHED' for r in rows)} run, "
          f"{sum(r['status'] == 'skipped' for r in rows)} skipped, {failed} failed. "
          f"Browse: mlflow ui --backend-store-uri {uri}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
