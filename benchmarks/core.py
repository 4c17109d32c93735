"""Method-core benchmark: training-step time and post-processing time, as a table.

    python benchmarks/core.py [--repeats N] [--step-repeats N] [--device cpu|cuda]

Rows (each baseline is measured in the same run, so ratios are comparable across machines):
- training step, batch 8, 320×320, ViT-S/8 random-init: Sempart baseline vs crop + GF on;
- guided filter per 320×320 mask: ours (torch) vs OpenCV's cv2.ximgproc.guidedFilter;
- bilateral solver per 320×320 mask (ours; 25 CG iterations).
Timings of random-init backbones equal those of pretrained ones (same arithmetic).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import numpy as np
import torch

from segtricks.bilateral_solver import bilateral_solver_filter
from segtricks.config import config_from_dict
from segtricks.guided_filter import guided_filter
from segtricks.model import build_model
from segtricks.trainer import loss_terms, loss_weights


def time_ms(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> List[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def train_step_fn(tricks: List[str], device: torch.device) -> Callable[[], None]:
    cfg = config_from_dict({"backbone": {"name": "dino_vits8", "weights": "random-init"}, "tricks": tricks})
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-4, betas=(0.9, 0.99))
    images = torch.rand(8, 3, 320, 320, device=device)
    gen = torch.Generator().manual_seed(0)
    weights = loss_weights(cfg)

    def step() -> None:
        terms = loss_terms(model, images, cfg, gen, autocast=device.type == "cuda")
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

    base = statistics.median(time_ms(train_step_fn([], device), args.step_repeats, device))
    tricks = statistics.median(time_ms(train_step_fn(["crop", "gf"], device), args.step_repeats, device))
    rows += [("train step, batch 8, 320², ViT-S/8: baseline", base, "1.00×"),
             ("train step, batch 8, 320², ViT-S/8: crop + GF", tricks, f"{tricks / base:.2f}× baseline")]

    rng = np.random.default_rng(0)
    img = rng.random((320, 320, 3), dtype=np.float32)
    mask = rng.random((320, 320), dtype=np.float32)
    timg = torch.from_numpy(img).permute(2, 0, 1)[None].to(device)
    tmask = torch.from_numpy(mask)[None, None].to(device)
    tb_img, tb_mask = timg.repeat(8, 1, 1, 1), tmask.repeat(8, 1, 1, 1)
    ours1 = statistics.median(time_ms(lambda: guided_filter(tmask, timg, 9, 1e-3), args.repeats, device))
    ours8 = statistics.median(time_ms(lambda: guided_filter(tb_mask, tb_img, 9, 1e-3), args.repeats, device)) / 8
    try:
        import cv2

        gray = img.mean(-1)
        ocv = statistics.median(time_ms(lambda: cv2.ximgproc.guidedFilter(gray, mask, 9, 1e-3),
                                        args.repeats, torch.device("cpu")))
        rows.append(("GF per 320² mask: OpenCV ximgproc (CPU)", ocv, "1.00×"))
    except (ImportError, AttributeError):
        ocv = float("nan")
        rows.append(("GF per 320² mask: OpenCV ximgproc", ocv, "not installed (opencv-contrib)"))
    rows.append((f"GF per 320² mask: ours, batch 1 ({device.type})", ours1, f"{ours1 / ocv:.2f}× OpenCV"))
    rows.append((f"GF per 320² mask: ours, batch 8 ({device.type})", ours8, f"{ours8 / ocv:.2f}× OpenCV"))
    bf_mask, bf_img = tmask.cpu(), timg.cpu()
    bf = statistics.median(time_ms(lambda: bilateral_solver_filter(bf_mask, bf_img), max(3, args.repeats // 4),
                                   torch.device("cpu")))
    rows.append(("BF per 320² mask: ours (CPU, 25 CG iterations)", bf, f"{bf / ocv:.1f}× OpenCV GF"))

    print(f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'what':<{width}} | {'ms (median)':>12} | {'ratio':<22} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 24}|")
    for name, ms, ratio in rows:
        print(f"| {name:<{width}} | {ms:>12.1f} | {ratio:<22} |")


if __name__ == "__main__":
    main()
