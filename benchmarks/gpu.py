"""GPU benchmark, ready before a GPU is: training, evaluation and post-processing throughput.

    python benchmarks/gpu.py            # on the GPU when present: ViT-S/8, 320², batch 8, crop + GF
    python benchmarks/gpu.py --tiny     # CPU-sized (demo backbone, 64², batch 2): CI keeps it working

Rows, each printed as it finishes: training steps/s in fp32 and at the device's precision (bf16 on
cards with native bf16, fp16 on older ones: ``segtricks.runtime.device.precision_of``), each with and
without channels_last; evaluation images/s (prediction with foreground selection); GF masks/s at
batch 64; BF masks/s on both of its paths (the torch grid on the device, and the numpy/scipy grid on
the CPU: the faster one should be the CUDA default); peak GPU memory of each row; the data loader's images/s (decode + augment of 400×300 JPEGs, per worker process); and the
projected wall time of a 30-epoch DUTS-TR run (10,553 images) at the fastest training setting, set
beside what the data loader can feed. Backbones are random-init (same arithmetic as pretrained).
Without --tiny, two whole grids as users run them: the rehearsal grid end to end (measured wall time
beside its ``--estimate``; needs ../shared/data) and table3's ``--estimate`` beside six trainings at
this table's fastest step.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Tuple

import torch

from core import time_ms, train_step_fn
from estimate_accuracy import estimate_then_run, estimated_total, run_command
from segtricks.runtime.device import FP32, precision_of
from segtricks.method.bilateral_solver import bilateral_solver_filter
from segtricks.config.schema import config_from_dict
from segtricks.estimate.measure import loader_images_per_s
from segtricks.method.guided_filter import guided_filter
from segtricks.models.model import build_model
from segtricks.evaluation.predict import predict_masks

DUTS_TR_IMAGES, EPOCHS = 10_553, 30


def peak_mib(device: torch.device) -> str:
    if device.type != "cuda":
        return "—"
    return f"{torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f}"


def measure(fn: Callable[[], object], repeats: int, device: torch.device) -> Tuple[float, str]:
    """Mean ms of ``fn`` (``core.time_ms``) and the peak GPU memory it reached."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return time_ms(fn, repeats), peak_mib(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized run (demo backbone, 64², batch 2)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    backbone, size, batch = ("demo_vit4", 64, 2) if args.tiny else ("dino_vits8", 320, 8)
    repeats = 1 if args.tiny else args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}; torch {torch.__version__}{'; --tiny sizes' if args.tiny else ''}\n")
    print("| what | throughput | mean | peak GPU MiB |")
    print("|---|---|---|---|", flush=True)

    def row(*cells: str) -> None:  # each row as soon as it is measured: a failure later loses none
        print("| " + " | ".join(cells) + " |", flush=True)

    best = math.inf
    # bf16 autocast over the whole loss is far slower than fp32 on CPUs without native bf16 kernels;
    # the tiny CPU run only keeps the fp32 code paths working
    precisions = [FP32] + ([precision_of(device)] if device.type == "cuda" else [])
    for precision in precisions:
        for channels_last in (False, True):
            step = train_step_fn(["crop", "gf"], device, precision, channels_last, backbone, size, batch)
            ms, mem = measure(step, repeats, device)
            best = min(best, ms)
            row(f"train step, {backbone} {size}², batch {batch}, crop + GF: "
                f"{precision.name}{', channels_last' if channels_last else ''}",
                f"{1e3 / ms:.2f} steps/s", f"{ms:.1f} ms", mem)
    cfg = config_from_dict({"backbone": {"name": backbone, "weights": "random-init"},
                            "data": {"image_size": size, "resize_short": size}})
    model = build_model(cfg).to(device).eval()
    images = torch.rand(batch, 3, size, size, device=device)
    ms, mem = measure(lambda: predict_masks(model, images, cfg), repeats, device)
    row(f"evaluation: prediction + foreground selection, batch {batch} ({precision_of(device).name})",
        f"{batch * 1e3 / ms:.1f} images/s", f"{ms:.1f} ms", mem)
    gf_batch = 4 if args.tiny else 64
    masks, guides = torch.rand(gf_batch, 1, size, size, device=device), torch.rand(gf_batch, 3, size, size, device=device)
    ms, mem = measure(lambda: guided_filter(masks, guides, 9, 1e-3), repeats, device)
    row(f"GF, batch {gf_batch} of {size}² masks", f"{gf_batch * 1e3 / ms:.0f} masks/s", f"{ms:.1f} ms", mem)
    # BF on a mask with structure (a disc) on a smooth image: random noise gives a degenerate grid
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((yy ** 2 + xx ** 2) < 0.4).float()[None, None]
    guide = torch.stack([0.5 + 0.4 * disc[0, 0], 0.3 + 0.2 * yy, 0.6 - 0.2 * xx])[None].clamp(0, 1)
    paths = [("numpy/scipy grid on the CPU", disc, guide)]
    if device.type != "cpu":
        paths.insert(0, (f"torch grid on {device.type}", disc.to(device), guide.to(device)))
    for what, m, g in paths:
        ms, mem = measure(lambda: bilateral_solver_filter(m, g), max(2, repeats // 3), device)
        row(f"BF, one {size}² mask (25 CG iterations), {what}", f"{1e3 / ms:.1f} masks/s", f"{ms:.1f} ms", mem)
    feed = loader_images_per_s(cfg, (300, 400), n=48)
    row("data loader: decode + augment 400×300 JPEG, per worker", f"{feed:.0f} images/s", "", "")
    steps = EPOCHS * math.ceil(DUTS_TR_IMAGES / batch)
    compute_s = steps * best / 1e3
    row(f"projected {EPOCHS}-epoch DUTS-TR training (fastest setting)", f"{compute_s / 60:.1f} min compute",
        f"loader needs ≥ {batch * 1e3 / best / feed:.1f} workers", "")
    if not args.tiny:  # whole grids, as users run them (the rehearsal needs ../shared/data)
        rehearsal = estimate_then_run(str(Path(__file__).parent / "rehearsal.yaml"))
        row("rehearsal grid end to end (4 cells, 2 trainings × 2 steps, 24 images): measured vs --estimate",
            f"{rehearsal.measured_s:.0f} s", f"estimate {rehearsal.estimate_s:.0f} s "
            f"({rehearsal.estimate_s / rehearsal.measured_s:.2f}×)", f"{rehearsal.estimate_bytes / 2 ** 20:.0f}")
        _, out = run_command([sys.executable, "-m", "segtricks.ablate", "--grid", "table3", "--dry-run", "--estimate"],
                             dict(os.environ))
        table3_s, table3_bytes = estimated_total(out)
        row("Table 3 (12 cells, 6 trainings × 30 epochs, 11,187 evaluation images): --estimate",
            f"{table3_s / 3600:.1f} h", f"6 trainings at this table's fastest step: "
            f"{6 * compute_s / 3600:.1f} h of training", f"{table3_bytes / 2 ** 20:.0f}")


if __name__ == "__main__":
    main()
