"""What a grid will cost before it starts: time, peak memory and disk, per cell and in total.

``ablate --grid G --dry-run --estimate`` measures on the device the grid would run on, with
random-init backbones of the same architectures (the same arithmetic as pretrained weights):
- a few training steps of each distinct (architecture, training tricks, image size, batch);
- a few evaluation batches of each distinct (architecture, size, batch): backbone, head, each
  post-processing trick at the prediction size, and resizing plus metrics at the datasets' typical
  original size;
- the data loader's images/s in one process (decode and augment), at the datasets' typical size;
- the tracking store: creating it (when it does not exist yet) and logging one run.
Then it extrapolates with the model below; the printed assumptions say which figures are measured.

Time of a cell = its training (when it trains) + its evaluations + logging its run:
- training = epochs left × (steps per epoch × step time + validation) ; steps per epoch =
  ⌈training images / batch⌉, capped by ``optim.steps_per_epoch``;
- evaluation of a dataset = images × (prediction + post-processing + metrics), protocols counted
  separately. The first cell of a training predicts; the others read its cached masks. The first
  training on a backbone runs the backbone; later ones read its cached keys and run only the head;
- a loader slower than the step (workers × loader images/s < batch / step time) bounds the step.
Peak memory of a cell = the larger of its training step's and its evaluation batch's (CUDA:
``max_memory_allocated``; CPU: the process's resident-set peak, reset before each measurement).
Disk: checkpoints (saved for real once per architecture and measured), the prediction and key
caches (rows × float16 bytes: exact), MLflow artifacts (per-image records and fixed figures: a model).
Dataset sizes come from the data when it is present, else from the registry's published sizes.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import io
import math
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from tqdm.auto import tqdm

from segtricks.data.datasets import PUBLISHED_SIZES, DatasetError, Sample, build_dataset
from segtricks.data.loaders import resolve_workers
from segtricks.data.views import TrainView
from segtricks.engine import checkpoint
from segtricks.engine.device import precision_of
from segtricks.engine.loop import loss_terms, loss_weights
from segtricks.engine.threads import one_thread
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.evaluation.predict import predict_raw, resize_to
from segtricks.method.tricks import post_trick_names, postprocess, training_tricks
from segtricks.models.backbones import RANDOM_INIT, build_backbone
from segtricks.models.model import build_model
from segtricks.spec.config import Config, DatasetRef, config_from_dict, to_dict
from segtricks.tracking.connect import open_client

RECORD_BYTES = 160  # one per-image row of records/<dataset>.csv (measured on the demo: 120–170 B)
FIXED_ARTIFACT_BYTES = 1.5e6  # per cell and dataset: samples .npz, prediction figure (demo: 0.6–1.4 MB)


# --- measuring ------------------------------------------------------------------------------------

def _resident_peak_reset() -> bool:
    """Reset this process's resident-set peak (Linux ≥ 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _resident_peak() -> int:
    """This process's resident-set peak in bytes (VmHWM)."""
    try:
        with open("/proc/self/status") as fh:
            return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_memory() -> None:
    """Free what the last measurement held, so that the next one's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap resident otherwise
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the block: CUDA's allocator peak on a GPU, else the resident-set peak."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, 0

    def __enter__(self) -> "PeakMemory":
        _release_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _resident_peak_reset()
        return self

    def __exit__(self, *exc) -> None:
        self.bytes = (torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                      else _resident_peak())


@dataclass
class Timing:
    """Seconds per call: the median of the timed repeats and their spread."""

    seconds: float
    low: float
    high: float
    repeats: int

    @property
    def spread(self) -> float:
        return (self.high - self.low) / self.seconds if self.seconds > 0 else 0.0


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), len(times))


@functools.lru_cache(maxsize=None)
def _architecture(name: str) -> Tuple[int, int, int]:
    b = build_backbone(name, RANDOM_INIT)
    return b.patch_size, b.embed_dim, len(b.vit.blocks)


def architecture(cfg: Config) -> Tuple[int, int, int]:
    """What a backbone costs depends on: its ViT's patch, width and depth (not its weights)."""
    return _architecture(cfg.backbone.name)


def measurement_config(cfg: Config, tricks: Sequence[str]) -> Config:
    """The cell's config on a random-init backbone with ``tricks``: what is measured."""
    data = to_dict(cfg)
    data["backbone"] = {**data["backbone"], "weights": RANDOM_INIT}
    data["tricks"] = list(tricks)
    return config_from_dict(data, source="<estimate>")


@dataclass
class TrainCost:
    step: Timing
    peak_bytes: int
    checkpoint_bytes: int  # last.pt + best.pt


@dataclass
class EvalCost:
    """An evaluation's costs, assembled from measurements that each depend on less (``Estimator``)."""

    backbone: Timing  # per batch
    head: Timing  # per batch
    post: Dict[str, Timing]  # per image, at the prediction size
    metrics: Timing  # per image: resize to the original size, then every metric
    batch: int
    peak_bytes: int


def measure_training(cfg: Config, device: torch.device, repeats: int) -> TrainCost:
    """Steps of the cell's head on a random-init backbone, on random images of the training shape."""
    torch.manual_seed(0)
    with PeakMemory(device) as peak:
        model = build_model(cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.head.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
        size = cfg.data.image_size
        images = torch.rand(cfg.optim.batch_size, 3, size, size, device=device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        generator = torch.Generator().manual_seed(0)
        weights = loss_weights(cfg)

        def step() -> None:
            terms = loss_terms(model, images, cfg, generator, precision_of(device))
            loss = sum(weights[k] * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        timing = time_calls(step, repeats, device)
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoints as Checkpointing writes them
        last, best = Path(tmp) / "last.pt", Path(tmp) / "best.pt"
        checkpoint.save_atomic({"head": model.head.state_dict(), "optimizer": optimizer.state_dict(),
                                "epoch": 0, "history": [], "best_score": 0.0, "best_epoch": 0,
                                "training_hash": "", "weights_id": ""}, last)
        checkpoint.save_atomic({"head": model.head.state_dict(), "weights_id": ""}, best)
        ckpt = last.stat().st_size + best.stat().st_size
    return TrainCost(timing, peak.bytes, ckpt)


@dataclass
class PredictionCost:
    backbone: Timing  # per batch
    head: Timing  # per batch
    masks: torch.Tensor  # (B, 1, S, S) on the CPU: what post-processing and metrics are timed on
    images: torch.Tensor  # (B, 3, S, S) on the CPU
    peak_bytes: int


def measure_prediction(cfg: Config, device: torch.device, repeats: int) -> PredictionCost:
    """Evaluation batches of the model as ``evaluate_model`` runs them: the backbone, then the head."""
    torch.manual_seed(0)
    batch, size = cfg.optim.batch_size, cfg.data.image_size
    with PeakMemory(device) as peak:
        model = build_model(cfg).to(device).eval()
        images = torch.rand(batch, 3, size, size, device=device)
        with torch.no_grad():
            features = model.backbone(model.normalise(images))
            t_backbone = time_calls(lambda: model.backbone(model.normalise(images)), repeats, device)
            t_head = time_calls(lambda: predict_raw(model, images, features=features), repeats, device)
            masks = predict_raw(model, images, features=features).cpu()
    return PredictionCost(t_backbone, t_head, masks, images.cpu(), peak.bytes)


def measure_post(prediction: PredictionCost, name: str, cfg: Config, repeats: int) -> Timing:
    """One image's post-processing trick ``name`` at the prediction size (on the CPU, one thread)."""
    with one_thread(True):
        return time_calls(lambda: postprocess(prediction.masks[:1], prediction.images[:1], [name], cfg), repeats,
                          torch.device("cpu"))


def measure_metrics(prediction: PredictionCost, original_hw: Tuple[int, int], repeats: int) -> Timing:
    """One image resized to ``original_hw`` and scored with every metric (on the CPU, one thread)."""
    h, w = original_hw
    gt = torch.zeros(h, w, dtype=torch.bool)
    gt[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    evaluator = SaliencyEvaluator(with_structure=True)

    def score() -> None:
        evaluator.update(resize_to(prediction.masks[:1], [torch.Size((h, w))])[0], gt, "x")

    with one_thread(True):
        return time_calls(score, repeats, torch.device("cpu"))


def loader_images_per_s(cfg: Config, original_hw: Tuple[int, int], n: int = 16) -> float:
    """TrainView's decode + resize + crop + flip + jitter in one process, on JPEGs of the typical size."""
    class Jpegs:
        has_masks = has_boxes = False
        skipped = ()

        def __init__(self) -> None:
            buf = io.BytesIO()
            Image.effect_noise((original_hw[1], original_hw[0]), 64).convert("RGB").save(buf, "JPEG", quality=90)
            self.data = buf.getvalue()

        def __len__(self) -> int:
            return n

        def load(self, i: int) -> Sample:
            return Sample(str(i), Image.open(io.BytesIO(self.data)).convert("RGB"))

        def item_id(self, i: int) -> str:
            return str(i)

    view = TrainView(Jpegs(), cfg.data.image_size, cfg.data.resize_short)
    view[(0, 0)]
    t0 = time.perf_counter()
    for i in range(n):
        view[(i, i)]
    return n / (time.perf_counter() - t0)


def measure_store() -> Tuple[float, float]:
    """Seconds to create a fresh SQLite MLflow store, and to log one run (params, metrics, an artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        t0 = time.perf_counter()
        client = open_client(uri)
        created = time.perf_counter() - t0
        t0 = time.perf_counter()
        exp = client.create_experiment("estimate", artifact_location=f"{tmp}/artifacts")
        run = client.create_run(exp)
        for i in range(60):
            client.log_param(run.info.run_id, f"p{i}", str(i))
        client.log_metric(run.info.run_id, "m", 0.5)
        (Path(tmp) / "config.yaml").write_text("x: 1\n")
        client.log_artifact(run.info.run_id, str(Path(tmp) / "config.yaml"))
        client.set_terminated(run.info.run_id)
        logged = time.perf_counter() - t0
    return created, logged


# --- datasets -------------------------------------------------------------------------------------

@dataclass
class DatasetSize:
    images: int
    typical_hw: Tuple[int, int]
    source: str  # "data" (counted here) or "published"


def dataset_size(ref: DatasetRef) -> DatasetSize:
    """Images and typical original size: counted when the data is here, else the published figures."""
    try:
        raw = build_dataset(ref)
    except (DatasetError, OSError):
        raw = None
    if raw is not None and len(raw):
        hws = []
        for i in range(0, len(raw), max(1, len(raw) // 8))[:8]:
            path = getattr(raw, "items", None)
            try:
                if path is not None and isinstance(path[i], tuple) and isinstance(path[i][1], Path):
                    with Image.open(path[i][1]) as im:  # header only: no decode
                        hws.append((im.height, im.width))
                else:
                    sample = raw.load(i)
                    hws.append((sample.image.height, sample.image.width))
            except Exception:  # an unreadable item: the run reports it; the estimate uses the others
                continue
        hw = tuple(int(statistics.median(v)) for v in zip(*hws)) if hws else (300, 400)
        return DatasetSize(len(raw), hw, "data")
    published = PUBLISHED_SIZES.get(ref.name)
    if published is None:
        raise DatasetError(f"dataset {ref.name!r} is not on this machine and has no published size; "
                           f"the estimate needs its folder ({ref.root or 'data root not set'})")
    images = published.split_images.get(ref.split, published.images)
    return DatasetSize(min(images, ref.limit) if ref.limit else images, published.typical_hw, "published")


# --- the estimate ---------------------------------------------------------------------------------

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


def process_age_s() -> float:
    """Seconds since this process started (imports included): what start-up costs."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / 100.0)
    except (OSError, ValueError, IndexError):
        return 0.0


class Estimator:
    """Measures each distinct workload once and prices cells with the module's model."""

    def __init__(self, device: torch.device, repeats: int = 2, progress: bool = True) -> None:
        self.device, self.repeats = device, repeats
        self._train: Dict[Tuple, TrainCost] = {}
        self._predict: Dict[Tuple, PredictionCost] = {}  # by (architecture, size, batch)
        self._post: Dict[Tuple, Timing] = {}  # by (trick and its config section, size)
        self._metrics: Dict[Tuple, Timing] = {}  # by original size
        self._loader: Dict[Tuple, float] = {}
        self._sizes: Dict[Tuple, DatasetSize] = {}
        self.bar = tqdm(desc="estimate: measuring", unit="workload", disable=not progress, leave=False)

    def size(self, ref: DatasetRef) -> DatasetSize:
        key = (ref.name, ref.root, ref.split, ref.limit)
        if key not in self._sizes:
            self._sizes[key] = dataset_size(ref)
        return self._sizes[key]

    def training(self, cfg: Config) -> TrainCost:
        tricks = tuple(t.name for t in training_tricks(cfg.tricks))
        key = (architecture(cfg), tricks, cfg.data.image_size, cfg.optim.batch_size)
        if key not in self._train:
            self.bar.set_description(f"estimate: training steps of {cfg.backbone.name} {list(tricks)}")
            self._train[key] = measure_training(measurement_config(cfg, tricks), self.device, self.repeats)
            self.bar.update()
        return self._train[key]

    def evaluation(self, cfg: Config, hw: Tuple[int, int]) -> EvalCost:
        key = (architecture(cfg), cfg.data.image_size, cfg.optim.batch_size)
        if key not in self._predict:
            self.bar.set_description(f"estimate: evaluation batches of {cfg.backbone.name}")
            self._predict[key] = measure_prediction(measurement_config(cfg, []), self.device, self.repeats)
            self.bar.update()
        prediction = self._predict[key]
        post = {}
        for name in post_trick_names(cfg.tricks):
            section = repr(getattr(cfg, name, None))  # gf.radius, bf.cg_iterations… change what it costs
            if (name, section, cfg.data.image_size) not in self._post:
                self._post[(name, section, cfg.data.image_size)] = measure_post(prediction, name, cfg, self.repeats)
            post[name] = self._post[(name, section, cfg.data.image_size)]
        if hw not in self._metrics:
            self._metrics[hw] = measure_metrics(prediction, hw, self.repeats)
        return EvalCost(prediction.backbone, prediction.head, post, self._metrics[hw], cfg.optim.batch_size,
                        prediction.peak_bytes)

    def loader(self, cfg: Config, hw: Tuple[int, int]) -> float:
        key = (cfg.data.image_size, cfg.data.resize_short, hw)
        if key not in self._loader:
            self._loader[key] = loader_images_per_s(cfg, hw)
        return self._loader[key]


def per_image_eval_s(cost: EvalCost, predict: str, post: Sequence[str]) -> float:
    """Seconds per image: ``predict`` is "model" (backbone + head), "head" (cached keys) or "cached"."""
    model = {"model": cost.backbone.seconds + cost.head.seconds, "head": cost.head.seconds, "cached": 0.0}[predict]
    return model / cost.batch + sum(cost.post[p].seconds for p in post) + cost.metrics.seconds


@dataclass
class PlannedEvaluation:
    """One evaluation of a cell: what it predicts and which cache rows it adds."""

    ref: DatasetRef
    protocol: str
    predict: str  # "model", "head" (the backbone's keys are cached) or "cached" (the masks are)
    mask_bytes: int = 0
    key_bytes: int = 0


class CachePlan:
    """Which evaluation of a grid computes what, cell after cell in the order they run: the first
    cell of a training predicts and caches its masks, the first training on a backbone caches its
    keys, and the ``cache`` config section can turn either off."""

    def __init__(self, size_of: Callable[[DatasetRef], "DatasetSize"]) -> None:
        self.size_of = size_of
        self.masks: set = set()
        self.keys: set = set()

    def evaluations(self, cell) -> List[PlannedEvaluation]:
        cfg, out = cell.cfg, []
        patch, dim, _ = architecture(cfg)
        side = cfg.data.image_size // patch
        for ref in cfg.eval:
            n = self.size_of(ref).images
            for protocol in cfg.eval_protocols:  # each protocol predicts (and caches) its own masks
                masks = (cell.training_hash, ref.name, ref.root, ref.split, ref.limit, protocol)
                keys = (cfg.backbone.name, cfg.backbone.weights, ref.name, ref.root, ref.split, ref.limit,
                        cfg.data.image_size, protocol)
                planned = PlannedEvaluation(ref, protocol, "cached" if masks in self.masks
                                            else "head" if keys in self.keys else "model")
                if cfg.cache.masks and masks not in self.masks:
                    planned.mask_bytes = n * cfg.data.image_size ** 2 * 2
                    self.masks.add(masks)
                if cfg.cache.keys and keys not in self.keys:
                    planned.key_bytes = n * dim * side * side * 2
                    self.keys.add(keys)
                out.append(planned)
        return out


def estimate_grid(cells: Sequence, actions: Dict[str, str], device: torch.device, repeats: int = 2,
                  store_exists: bool = True, progress: bool = True) -> GridEstimate:
    """Price every cell of a grid (``cells``: ``segtricks.spec.grid.Cell`` in the order they run;
    ``actions``: cell id → the planned action's value, e.g. ``train+evaluate``, ``evaluate``, ``skip``)."""
    est = Estimator(device, repeats, progress)
    created_s, run_s = measure_store()
    startup = process_age_s() + (0.0 if store_exists else created_s)
    caches = CachePlan(est.size)
    rows: List[CellEstimate] = []
    trained: set = set()
    feed: List[str] = []
    for cell in cells:
        action = actions.get(cell.id, "train+evaluate")
        row = CellEstimate(cell.id, action)
        rows.append(row)
        if action == "skip":
            continue
        cfg = cell.cfg
        row.log_s = run_s
        post = post_trick_names(cfg.tricks)
        if not cell.trains:  # precomputed maps: post-processing at full size, metrics
            for ref in cfg.eval:
                size = est.size(ref)
                cost = est.evaluation(cfg, size.typical_hw)
                row.eval_s += size.images * (sum(cost.post[p].seconds for p in post) + cost.metrics.seconds)
            continue
        if action in ("train+evaluate", "resume") and cell.training_hash not in trained:
            trained.add(cell.training_hash)
            row.train_s, note, message = training_seconds(est, cell, action)
            cost = est.training(cfg)
            row.peak_bytes = max(row.peak_bytes, cost.peak_bytes)
            row.disk_bytes["checkpoints"] = cost.checkpoint_bytes
            row.notes.append(note)
            feed += [message] if message else []
        for planned in caches.evaluations(cell):
            size = est.size(planned.ref)
            cost = est.evaluation(cfg, size.typical_hw)
            row.peak_bytes = max(row.peak_bytes, cost.peak_bytes)
            row.eval_s += size.images * per_image_eval_s(cost, planned.predict, post)
            for kind, n in (("masks", planned.mask_bytes), ("keys", planned.key_bytes),
                            ("artifacts", size.images * RECORD_BYTES + FIXED_ARTIFACT_BYTES)):
                row.disk_bytes[kind] = row.disk_bytes.get(kind, 0) + n
    est.bar.close()
    spreads = [t.step.spread for t in est._train.values()] + [p.backbone.spread for p in est._predict.values()]
    sources = sorted({f"{k[0]}/{k[2]}: {v.images} images of about {v.typical_hw[1]}×{v.typical_hw[0]} ({v.source})"
                      for k, v in est._sizes.items()})
    assumptions = [
        f"measured on {device.type}: {len(est._train)} training workload(s), {repeats} timed steps each after "
        f"one warm-up; {len(est._predict)} evaluation workload(s), {repeats} timed batches each; random-init "
        f"backbones (the same arithmetic as pretrained ones)",
        f"timing spread between repeats: up to {100 * max(spreads + [0.0]):.0f}% (the machine's load moves it)",
        f"start-up {startup:.0f} s (imports" + ("" if store_exists else f", creating the store {created_s:.1f} s")
        + f"), logging {run_s:.1f} s per run",
        "datasets: " + "; ".join(sources),
        "extrapolated: every step costs what the measured steps cost; validation and evaluation scale with "
        "the image count; artifacts are modelled (records 160 B per image, 1.5 MB of figures per dataset)",
    ]
    return GridEstimate(device.type, rows, startup, assumptions, feed)


def training_seconds(est: Estimator, cell, action: str) -> Tuple[float, str, str]:
    """The training's seconds, how they add up, and a line when the data loader cannot keep up."""
    cfg = cell.cfg
    cost = est.training(cfg)
    train = est.size(cfg.data.train)
    steps = math.ceil(train.images / cfg.optim.batch_size)
    if cfg.optim.steps_per_epoch is not None:
        steps = min(steps, cfg.optim.steps_per_epoch)
    done = cell.training.status().epochs_done if action == "resume" else 0
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


def disk_needed(cells: Sequence, actions: Dict[str, str]) -> float:
    """Bytes the caches of the cells to run will add (exact row sizes; nothing is measured): the
    free-space check before a grid starts. A dataset that is absent and unpublished counts as empty
    (the preflight names it)."""
    def known_size(ref: DatasetRef) -> DatasetSize:
        try:
            return dataset_size(ref)
        except DatasetError:
            return DatasetSize(0, (0, 0), "absent")

    caches = CachePlan(known_size)
    total = 0.0
    for cell in cells:
        if cell.trains and actions.get(cell.id) != "skip":
            total += sum(p.mask_bytes + p.key_bytes for p in caches.evaluations(cell))
    return total


# --- printing -------------------------------------------------------------------------------------

def human_s(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def human_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def format_estimate(est: GridEstimate, free_bytes: Optional[float] = None) -> str:
    width = max([len(c.name) for c in est.cells] + [4])
    lines = [f"estimate on {est.device} (measured here; see the assumptions below)",
             f"  {'cell':<{width}}  {'action':<14} {'train':>8} {'evaluate':>9} {'total':>8} {'peak mem':>9} "
             f"{'disk':>9}  disk by kind"]
    for c in est.cells:
        kinds = ", ".join(f"{k} {human_bytes(v)}" for k, v in c.disk_bytes.items() if v)
        lines.append(f"  {c.name:<{width}}  {c.action:<14} {human_s(c.train_s):>8} {human_s(c.eval_s):>9} "
                     f"{human_s(c.total_s):>8} {human_bytes(c.peak_bytes) if c.peak_bytes else '—':>9} "
                     f"{human_bytes(sum(c.disk_bytes.values())):>9}  {kinds}")
    lines.append(f"  {'total':<{width}}  {'':<14} {'':>8} {'':>9} {human_s(est.total_s):>8} "
                 f"{human_bytes(est.peak_bytes):>9} {human_bytes(est.disk_bytes):>9}  "
                 f"(start-up {human_s(est.startup_s)} included; cells run one after another)")
    lines += [f"  loader: {f}" for f in est.feed] or ["  loader: keeps up with every training step measured"]
    if free_bytes is not None and est.disk_bytes > free_bytes:
        lines.append(f"  warning: the grid needs about {human_bytes(est.disk_bytes)} of disk and "
                     f"{human_bytes(free_bytes)} is free")
    lines += ["  assumptions:"] + [f"    - {a}" for a in est.assumptions]
    return "\n".join(lines)


def free_bytes(path: Path) -> float:
    """Free space on the filesystem that holds ``path`` (its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return float(shutil.disk_usage(path).free)
