"""The cost model: each cell of a grid priced from the measured workloads (``segtricks.estimate.measure``)
and the cache plan (``segtricks.estimate.cache_plan``); the package docstring states the model.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from segtricks.config.schema import METHOD_REGISTRY, Config, DatasetRef
from segtricks.data.datasets import DatasetSize, dataset_size
from segtricks.data.pseudo_masks import PseudoMaskFolder
from segtricks.data.loaders import resolve_workers
from segtricks.estimate.cache_plan import CachePlan, architecture
from segtricks.estimate.measure import (Measurements, PredictionCost, Timing, TrainCost, loader_images_per_s,
                                        measure_method, measure_metrics, measure_post, measure_prediction,
                                        measure_store, measure_training, measurement_config, process_age_s)
from segtricks.method.tricks import post_trick_names, training_tricks
from segtricks.registry import registered_attributes
from segtricks.runners.plan import Action

RECORD_BYTES = 160  # one per-image row of records/<dataset>.csv (measured on the demo: 120–170 B)
FIXED_ARTIFACT_BYTES = 1.5e6  # per cell and dataset: samples .npz, prediction figure (demo: 0.6–1.4 MB)


@dataclass
class EvalCost:
    """An evaluation's costs, assembled from measurements that each depend on less (``Estimator``)."""

    backbone: Timing  # per batch
    head: Timing  # per batch
    post: Dict[str, Timing]  # per image, at the prediction size
    metrics: Timing  # per image: resize to the original size, then every metric
    batch: int
    peak_bytes: int


@dataclass
class CellEstimate:
    name: str
    action: str
    train_s: float = 0.0
    eval_s: float = 0.0
    log_s: float = 0.0
    peak_bytes: int = 0
    disk_bytes: Dict[str, float] = field(default_factory=dict)  # checkpoints, masks, keys, artifacts
    notes: List[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.log_s


@dataclass
class GridEstimate:
    device: str
    cells: List[CellEstimate]
    startup_s: float
    assumptions: List[str]
    feed: List[str]

    @property
    def total_s(self) -> float:
        return self.startup_s + sum(c.total_s for c in self.cells)

    @property
    def peak_bytes(self) -> int:
        return max([c.peak_bytes for c in self.cells] + [0])

    @property
    def disk_bytes(self) -> float:
        return sum(sum(c.disk_bytes.values()) for c in self.cells)


class Estimator:
    """Prices cells from the kept measurements of each distinct workload (measuring what is not kept)."""

    def __init__(self, measurements: Measurements) -> None:
        self.m = measurements
        self.trainings: Dict[Tuple, TrainCost] = {}  # what this estimate used, for its assumptions
        self.predictions: Dict[Tuple, PredictionCost] = {}
        self._sizes: Dict[Tuple, DatasetSize] = {}

    def size(self, ref: DatasetRef) -> DatasetSize:
        key = (ref.name, ref.root, ref.split, ref.limit)
        if key not in self._sizes:
            self._sizes[key] = dataset_size(ref)
        return self._sizes[key]

    def training(self, cfg: Config) -> TrainCost:
        tricks = tuple(t.name for t in training_tricks(cfg.tricks))
        key = (cfg.method, architecture(cfg), tricks, cfg.data.image_size, cfg.optim.batch_size)
        if key not in self.trainings:
            self.trainings[key] = self.m.get(
                "training", key, lambda: measure_training(measurement_config(cfg, tricks), self.m.device, self.m.repeats),
                f"training steps of {cfg.method} on {cfg.backbone.name} {list(tricks)}")
        return self.trainings[key]

    def evaluation(self, cfg: Config, hw: Tuple[int, int]) -> EvalCost:
        key = (architecture(cfg), cfg.data.image_size, cfg.optim.batch_size)
        if key not in self.predictions:
            self.predictions[key] = self.m.get(
                "prediction", key, lambda: measure_prediction(measurement_config(cfg, []), self.m.device, self.m.repeats),
                f"evaluation batches of {cfg.backbone.name}")
        prediction = self.predictions[key]
        post = {}
        for name in post_trick_names(cfg.tricks):
            section = repr(getattr(cfg, name, None))  # gf.radius, bf.cg_iterations… change what it costs
            post[name] = self.m.get("post", (name, section, cfg.data.image_size),
                                    lambda: measure_post(name, cfg, self.m.repeats), f"post-processing {name}")
        return EvalCost(prediction.backbone, prediction.head, post, self.metrics(cfg, hw), cfg.optim.batch_size,
                        prediction.peak_bytes)

    def metrics(self, cfg: Config, hw: Tuple[int, int]) -> Timing:
        return self.m.get("metrics", (cfg.data.image_size, hw),
                          lambda: measure_metrics(cfg.data.image_size, hw, self.m.repeats), "metrics")

    def post_at(self, cfg: Config, name: str, hw: Tuple[int, int]) -> Timing:
        """A post-processing trick on a full-size map (a method's, a folder's)."""
        section = repr(getattr(cfg, name, None))
        return self.m.get("post", (name, section, hw), lambda: measure_post(name, cfg, self.m.repeats, hw),
                          f"post-processing {name} at {hw[1]}×{hw[0]}")

    def method(self, cfg: Config, hw: Tuple[int, int]) -> Timing:
        """One image through a method evaluated image by image (training-free, or FOUND's trained
        model) at its own size."""
        section = repr(getattr(cfg, cfg.method, None))
        return self.m.get("method", (cfg.method, section, architecture(cfg), hw),
                          lambda: measure_method(cfg, hw, self.m.device, self.m.repeats),
                          f"{cfg.method} on {cfg.backbone.name}")

    def loader(self, cfg: Config, hw: Tuple[int, int]) -> float:
        return self.m.get("loader", (cfg.method, cfg.data.image_size, cfg.data.resize_short, hw),
                          lambda: loader_images_per_s(cfg, hw), "the data loader")

    def store(self) -> Tuple[float, float]:
        return self.m.get("store", (), measure_store, "the tracking store")


def per_image_eval_s(cost: EvalCost, predict: str, post: Sequence[str]) -> float:
    """Seconds per image: ``predict`` is "model" (backbone + head), "head" (cached keys) or "cached"."""
    model = {"model": cost.backbone.seconds + cost.head.seconds, "head": cost.head.seconds, "cached": 0.0}[predict]
    return model / cost.batch + sum(cost.post[p].seconds for p in post) + cost.metrics.seconds


def estimate_grid(cells: Sequence, actions: Dict[str, Action], device: torch.device, repeats: int = 2,
                  store_exists: bool = True, progress: bool = True, remeasure: bool = False) -> GridEstimate:
    """Price every cell of a grid (``cells``: ``segtricks.config.grid.Cell`` in the order they run;
    ``actions``: cell id → its planned ``Action``; a cell not in it trains). Workloads measured before
    on this machine and device are not measured again unless ``remeasure``."""
    measurements = Measurements(device, repeats, remeasure, progress)
    est = Estimator(measurements)
    created_s, run_s = est.store()
    startup = process_age_s() + (0.0 if store_exists else created_s)
    caches = CachePlan(est.size)
    rows: List[CellEstimate] = []
    trained: set = set()
    feed: List[str] = []
    for cell in cells:
        action = actions.get(cell.id, Action.TRAIN)
        row = CellEstimate(cell.id, action.value)
        rows.append(row)
        if action is Action.SKIP:
            continue
        cfg = cell.cfg
        row.log_s = run_s
        post = post_trick_names(cfg.tricks)
        if action in (Action.TRAIN, Action.RESUME) and cell.trains and cell.training_hash not in trained:
            trained.add(cell.training_hash)
            row.train_s, note, message = training_seconds(est, cell, action)
            cost = est.training(cfg)
            row.peak_bytes = max(row.peak_bytes, cost.peak_bytes)
            row.disk_bytes["checkpoints"] = cost.checkpoint_bytes
            row.notes.append(note)
            feed += [message] if message else []
            if cell.teacher is not None and PseudoMaskFolder(Path(cfg.distill.masks)).completion() is None:
                export_s, note = export_seconds(est, cell)
                row.train_s += export_s
                row.notes.append(note)
        if cfg.maps is not None or registered_attributes(*METHOD_REGISTRY)[cfg.method]["per_image"]:
            # maps or a method predicting image by image: (its prediction,) post-processing at full size, metrics
            for ref in cfg.eval:
                size = est.size(ref)
                hw = size.typical_hw
                predict = 0.0 if cfg.maps is not None else est.method(cfg, hw).seconds
                row.eval_s += size.images * (predict + sum(est.post_at(cfg, p, hw).seconds for p in post)
                                             + est.metrics(cfg, hw).seconds)
            continue
        for planned in caches.evaluations(cell):
            size = est.size(planned.ref)
            cost = est.evaluation(cfg, size.typical_hw)
            row.peak_bytes = max(row.peak_bytes, cost.peak_bytes)
            row.eval_s += size.images * per_image_eval_s(cost, planned.predict, post)
            for kind, n in (("masks", planned.mask_bytes), ("keys", planned.key_bytes),
                            ("artifacts", size.images * RECORD_BYTES + FIXED_ARTIFACT_BYTES)):
                row.disk_bytes[kind] = row.disk_bytes.get(kind, 0) + n
    measurements.close()
    spreads = [t.step.spread for t in est.trainings.values()] + [p.backbone.spread for p in est.predictions.values()]
    sources = sorted({f"{k[0]}/{k[2]}: {v.images} images of about {v.typical_hw[1]}×{v.typical_hw[0]} ({v.source})"
                      for k, v in est._sizes.items()})
    assumptions = [
        f"measured on {device.type}: {len(est.trainings)} training workload(s), {repeats} timed steps each after "
        f"one warm-up; {len(est.predictions)} evaluation workload(s), {repeats} timed batches each; random-init "
        f"backbones (the same arithmetic as pretrained ones); "
        + (f"{measurements.measured} workload(s) measured now, the others kept from earlier estimates on this "
           f"machine ({measurements.path}; --remeasure measures them again)" if measurements.measured
           < len(measurements.used) else "every workload measured now"),
        f"timing spread between repeats: up to {100 * max(spreads + [0.0]):.0f}% (the machine's load moves it)",
        f"start-up {startup:.0f} s (imports" + ("" if store_exists else f", creating the store {created_s:.1f} s")
        + f"), logging {run_s:.1f} s per run",
        "datasets: " + "; ".join(sources),
        "extrapolated: every step costs what the measured steps cost; validation and evaluation scale with "
        "the image count; artifacts are modelled (records 160 B per image, 1.5 MB of figures per dataset)",
    ]
    return GridEstimate(device.type, rows, startup, assumptions, feed)


def export_seconds(est: Estimator, cell) -> Tuple[float, str]:
    """A distillation cell's first stage: its teacher predicting every training image at the image's
    size, with the teacher's post-processing (``segtricks.inference.pseudo_labels``); and how it adds up."""
    teacher = cell.teacher.cfg
    train = est.size(cell.cfg.data.train)
    hw = train.typical_hw
    post = post_trick_names(teacher.tricks)
    if registered_attributes(*METHOD_REGISTRY)[teacher.method]["per_image"]:
        per_image = est.method(teacher, hw).seconds + sum(est.post_at(teacher, p, hw).seconds for p in post)
    else:  # Sempart's batched prediction at its size, post-processed there, resized to the image
        cost = est.evaluation(teacher, hw)
        per_image = per_image_eval_s(cost, "model", post)
    return train.images * per_image, f"pseudo-masks of {cell.teacher.name}: {train.images} images × {per_image:.2f} s"


def training_seconds(est: Estimator, cell, action: Action) -> Tuple[float, str, str]:
    """The training's seconds, how they add up, and a line when the data loader cannot keep up."""
    cfg = cell.cfg
    cost = est.training(cfg)
    train = est.size(cfg.data.train)
    steps = math.ceil(train.images / cfg.optim.batch_size)
    if cfg.optim.steps_per_epoch is not None:
        steps = min(steps, cfg.optim.steps_per_epoch)
    done = cell.training.status().epochs_done if action is Action.RESUME else 0
    epochs = max(cfg.optim.epochs - done, 0)
    step_s, message = cost.step.seconds, ""
    rate = est.loader(cfg, train.typical_hw)
    workers = resolve_workers(cfg.data.num_workers)
    feed_s = cfg.optim.batch_size / (rate * max(workers, 1))
    if workers == 0:
        step_s += feed_s  # loading happens in the training process, between steps
    elif feed_s > step_s:
        message = (f"{cell.id}: {workers} loader worker(s) feed {rate * workers:.0f} images/s, the step "
                   f"consumes {cfg.optim.batch_size / step_s:.0f}: loader-bound (raise data.num_workers)")
        step_s = feed_s
    val_s = 0.0
    if cfg.data.val is not None:
        val = est.size(cfg.data.val)
        plain = measurement_config(cfg, [t for t in cfg.tricks if t not in post_trick_names(cfg.tricks)])
        val_s = val.images * per_image_eval_s(est.evaluation(plain, val.typical_hw), "model", ())
    note = f"{epochs} epochs × {steps} steps × {step_s:.2f} s" + (f" + validation {val_s:.0f} s per epoch" if val_s else "")
    return epochs * (steps * step_s + val_s), note, message
