"""Method-core benchmark: training-step time and post-processing time, as a table.

    python benchmarks/core.py [--repeats N] [--step-repeats N] [--device cpu|cuda]

Rows (each baseline is measured in the same run, so ratios are comparable across machines):
- training step, batch 8, 320×320, ViT-S/8 random-init: Sempart baseline vs crop + GF on;
- guided filter and bilateral solver (25 CG iterations) per 320×320 mask on CPU (the guided filter
  against the reference and OpenCV: benchmarks/guided_filter.py).
Timings of random-init backbones equal those of pretrained ones (same arithmetic).
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional

import numpy as np
import torch
from torch.utils.benchmark import Timer

from segtricks.method.bilateral_solver import bilateral_solver_filter
from segtricks.config.schema import config_from_dict
from segtricks.method.guided_filter import guided_filter
from segtricks.models.model import build_model
from segtricks.runtime.device import Precision, precision_of
from segtricks.engine.loop import build_optimizer, loss_terms, loss_weights


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Mean milliseconds per call of ``fn`` over ``repeats`` calls in one block, by
    ``torch.utils.benchmark.Timer`` at this process's torch thread count: two untimed calls warm it up,
    and its clock synchronises the GPU at both ends of the block."""
    return Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).timeit(repeats).mean * 1e3


def train_step_fn(tricks: List[str], device: torch.device, precision: Optional[Precision] = None,
                  channels_last: bool = False, backbone: str = "dino_vits8", size: int = 320,
                  batch: int = 8) -> Callable[[], None]:
    """One optimiser step of the head (random-init backbone) under ``precision`` (default: the
    device's, ``precision_of``)."""
    cfg = config_from_dict({"backbone": {"name": backbone, "weights": "random-init"}, "tricks": tricks,
                            "data": {"image_size": size, "resize_short": size}})
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model.head.parameters())
    images = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    weights = loss_weights(cfg)
    precision = precision or precision_of(device)

    def step() -> None:
        terms = loss_terms(model, images, cfg, gen, precision)
        loss = sum(weights[k] * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="repeats of the per-mask timings")
    ap.add_argument("--step-repeats", type=int, default=2, help="repeats of the training-step timings")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []

    base = time_ms(train_step_fn([], device), args.step_repeats)
    tricks = time_ms(train_step_fn(["crop", "gf"], device), args.step_repeats)
    rows += [("train step, batch 8, 320², ViT-S/8: baseline", base, "1.00×"),
             ("train step, batch 8, 320², ViT-S/8: crop + GF", tricks, f"{tricks / base:.2f}× baseline")]

    rng = np.random.default_rng(0)
    timg = torch.from_numpy(rng.random((320, 320, 3), dtype=np.float32)).permute(2, 0, 1)[None]
    tmask = torch.from_numpy(rng.random((320, 320), dtype=np.float32))[None, None]
    gf = time_ms(lambda: guided_filter(tmask, timg, 9, 1e-3), args.repeats)
    rows.append(("GF per 320² mask (CPU; benchmarks/guided_filter.py compares)", gf, "1.00×"))
    bf = time_ms(lambda: bilateral_solver_filter(tmask, timg), max(3, args.repeats // 4))
    rows.append(("BF per 320² mask: ours (CPU, 25 CG iterations)", bf, f"{bf / gf:.1f}× GF"))

    print(f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'what':<{width}} | {'ms (mean)':>12} | {'ratio':<22} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 24}|")
    for name, ms, ratio in rows:
        print(f"| {name:<{width}} | {ms:>12.1f} | {ratio:<22} |")


if __name__ == "__main__":
    main()
