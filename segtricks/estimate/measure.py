"""Measuring what a grid's workloads cost on this machine, and keeping each measurement.

Each distinct workload (a training step of an architecture with its training tricks, size and batch;
an evaluation batch; one image's post-processing trick; the metrics at an original size; the loader;
the tracking store) is measured once, with random-init backbones (the same arithmetic as pretrained
ones), and kept in a JSON file per user (``$SEGTRICKS_MEASUREMENTS``, default
``~/.cache/segtricks/measurements.json``) under the machine, the device, torch's version, the threads,
the repeats and the workload: measuring Table 3's workloads takes about 12 minutes on a 2-core CPU, and a
second ``--estimate`` of it, or of another grid sharing workloads, then takes seconds. ``--remeasure``
measures again (and replaces what was kept).
"""
from __future__ import annotations

import ctypes
import gc
import io
import json
import os
import platform
import re
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from segtricks.config.schema import METHOD_REGISTRY, Config, config_from_dict, to_dict
from segtricks.registry import registered_attributes
from segtricks.data.datasets import Sample
from segtricks.engine.checkpoint import Checkpointer
from segtricks.engine.folder import TrainingFolder
from segtricks.engine.loop import build_optimizer, loss_terms, loss_weights
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.evaluation.predict import backbone_keys, predict_raw, resize_to
from segtricks.files import write_atomic
from segtricks.method.tricks import postprocess
from segtricks.models.weights import RANDOM_INIT
from segtricks.methods.registry import build_method, training_recipe
from segtricks.models.model import build_model
from segtricks.runtime.device import precision_of
from segtricks.runtime.threads import one_thread
from segtricks.tracking.connect import open_client


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
class PredictionCost:
    backbone: Timing  # per batch
    head: Timing  # per batch
    peak_bytes: int


def measure_training(cfg: Config, device: torch.device, repeats: int) -> TrainCost:
    """Steps of the cell's head on a random-init backbone, on random images of the training shape,
    with the trainer's optimizer; then its checkpoints, saved as the trainer saves them, weighed. The
    steps are the first steps of the method (FOUND's carry its background term, which its steps after
    the 100th do not)."""
    torch.manual_seed(0)
    with PeakMemory(device) as peak:
        model = training_recipe(cfg).build_model(cfg).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(cfg, model.head.parameters())
        size = cfg.data.image_size
        images = torch.rand(cfg.optim.batch_size, 3, size, size, device=device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        targets = torch.rand(cfg.optim.batch_size, size, size, device=device) > 0.5  # read by SelfMask only
        generator = torch.Generator().manual_seed(0)
        weights = loss_weights(cfg)

        def step() -> None:
            terms = loss_terms(model, images, cfg, generator, precision_of(device), targets=targets)
            loss = sum(weights[k] * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        timing = time_calls(step, repeats, device)
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoints as the trainer writes them
        folder = TrainingFolder(Path(tmp))
        Checkpointer(folder, "0" * 64).save_epoch(model, optimizer, torch.amp.GradScaler("cuda", enabled=False), 0,
                                                  [], 0.0, 0, improved=True)
        ckpt = folder.last.stat().st_size + folder.best.stat().st_size
    return TrainCost(timing, peak.bytes, ckpt)


def measure_prediction(cfg: Config, device: torch.device, repeats: int) -> PredictionCost:
    """Evaluation batches of the model as ``evaluate_model`` runs them: the backbone, then the head."""
    torch.manual_seed(0)
    batch, size = cfg.optim.batch_size, cfg.data.image_size
    with PeakMemory(device) as peak:
        model = build_model(cfg).to(device).eval()
        images = torch.rand(batch, 3, size, size, device=device)
        with torch.no_grad():
            features = backbone_keys(model, images)
            t_backbone = time_calls(lambda: backbone_keys(model, images), repeats, device)
            t_head = time_calls(lambda: predict_raw(model, images, features=features), repeats, device)
    return PredictionCost(t_backbone, t_head, peak.bytes)


def synthetic_mask(hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A (1, 1, H, W) soft mask with an object (a disc with a soft edge and noise) and its (1, 3, H, W)
    image: what post-processing and metrics are timed on (their cost depends on the size, and a little
    on the content: a random-init model's prediction is no more typical)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, hw[0]), torch.linspace(-1, 1, hw[1]), indexing="ij")
    mask = torch.sigmoid(8 * (0.5 - (yy ** 2 + xx ** 2).sqrt())) + 0.05 * torch.rand(*hw, generator=g)
    image = torch.stack([0.4 + 0.4 * mask, 0.3 + 0.2 * yy, 0.5 - 0.2 * xx]).clamp(0, 1)
    return mask.clamp(0, 1)[None, None], image[None]


def measure_method(cfg: Config, hw: Tuple[int, int], device: torch.device, repeats: int) -> Timing:
    """One image of size ``hw`` through a method evaluated image by image (its backbone random-init;
    FOUND's decoder freshly initialised), as ``evaluate_method`` predicts it."""
    measured = measurement_config(cfg, [])
    if registered_attributes(*METHOD_REGISTRY)[cfg.method]["trains"]:
        recipe = training_recipe(measured)
        method = recipe.as_method(measured, recipe.build_model(measured).to(device))
    else:
        method = build_method(measured, device)
    _, image = synthetic_mask(hw)
    task = "saliency"
    return time_calls(lambda: method.predict(image[0].to(device), task), repeats, device)


def measure_post(name: str, cfg: Config, repeats: int, hw: Optional[Tuple[int, int]] = None) -> Timing:
    """One image's post-processing trick ``name`` at the prediction size, or at ``hw`` (a method's or
    a map's own size), on the CPU, one thread."""
    mask, image = synthetic_mask(hw or (cfg.data.image_size, cfg.data.image_size))
    with one_thread(True):
        return time_calls(lambda: postprocess(mask, image, [name], cfg), repeats, torch.device("cpu"))


def measure_metrics(size: int, original_hw: Tuple[int, int], repeats: int) -> Timing:
    """One image resized to ``original_hw`` and scored with every metric (on the CPU, one thread)."""
    h, w = original_hw
    mask, _ = synthetic_mask((size, size))
    gt = torch.zeros(h, w, dtype=torch.bool)
    gt[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    evaluator = SaliencyEvaluator(with_structure=True)

    def score() -> None:
        evaluator.update(resize_to(mask, [torch.Size((h, w))])[0], gt, "x")

    with one_thread(True):
        return time_calls(score, repeats, torch.device("cpu"))


def loader_images_per_s(cfg: Config, original_hw: Tuple[int, int], n: int = 16) -> float:
    """The method's training view (Sempart's decode + resize + crop + flip + jitter, FOUND's) in one
    process, on JPEGs of the typical size."""
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
            image = Image.open(io.BytesIO(self.data)).convert("RGB")
            return Sample(str(i), image, mask=np.asarray(image)[..., 0] > 128)  # a mask for the views that read one

        def item_id(self, i: int) -> str:
            return str(i)

    view = training_recipe(cfg).train_view(cfg, Jpegs())
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
        (Path(tmp) / "artifact.yaml").write_text("x: 1\n")
        client.log_artifact(run.info.run_id, str(Path(tmp) / "artifact.yaml"))
        client.set_terminated(run.info.run_id)
        logged = time.perf_counter() - t0
    return created, logged


def process_age_s() -> float:
    """Seconds since this process started (imports included): what start-up costs."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / 100.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def machine() -> str:
    """What a measurement was taken on: host, CPU model and the CPUs this process may use."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        pass
    return f"{socket.gethostname()} | {cpu} | {len(os.sched_getaffinity(0))} CPUs"


def measurements_file() -> Path:
    return Path(os.environ.get("SEGTRICKS_MEASUREMENTS", Path.home() / ".cache" / "segtricks" / "measurements.json"))


class Measurements:
    """The kept measurements of this machine and device (the module docstring): ``get(kind, workload,
    measure)`` returns the kept one, or measures (always, with ``remeasure``), keeps and returns it."""

    def __init__(self, device: torch.device, repeats: int, remeasure: bool = False, progress: bool = True) -> None:
        self.device, self.repeats, self.remeasure = device, repeats, remeasure
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.scope = f"{machine()} | {name} | torch {torch.__version__} | {torch.get_num_threads()} threads"
        self.path = measurements_file()
        try:
            self._kept = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or a damaged file: measured again
            self._kept = {}
        self.measured = 0  # workloads measured by this estimate (the rest were kept)
        self.used: set = set()  # every workload this estimate asked for
        self.bar = tqdm(desc="estimate: measuring", unit="workload", disable=not progress, leave=False)

    def get(self, kind: str, workload: Tuple, measure: Callable[[], object], what: str):
        key = f"{self.scope} | {self.repeats} repeats | {kind} {workload!r}"
        self.used.add(key)
        if key in self._kept and not self.remeasure:
            return _load(kind, self._kept[key])
        self.bar.set_description(f"estimate: {what}")
        value = measure()
        self.bar.update()
        self.measured += 1
        self._kept[key] = _dump(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self._kept, indent=0, sort_keys=True), fsync=False)
        return value

    def close(self) -> None:
        self.bar.close()


def _dump(value) -> object:
    if isinstance(value, Timing):
        return asdict(value)
    if isinstance(value, (TrainCost, PredictionCost)):
        return asdict(value)
    return value


def _load(kind: str, data):
    if kind == "training":
        return TrainCost(Timing(**data["step"]), data["peak_bytes"], data["checkpoint_bytes"])
    if kind == "prediction":
        return PredictionCost(Timing(**data["backbone"]), Timing(**data["head"]), data["peak_bytes"])
    if kind in ("post", "metrics", "method"):
        return Timing(**data)
    if kind == "store":
        return tuple(data)
    return data
