"""Guided filter speed: ours vs the reference's torch implementation vs OpenCV, as same-run ratios.

    python benchmarks/guided_filter.py [--rounds N] [--size 320]

One 320×320 mask with an RGB guide, radius 9, eps 1e-3, at batch 1 and batch 8 (time per mask), with
torch (``torch.utils.benchmark.Timer``'s ``num_threads``) and OpenCV at 1 and at 2 threads. Each round
times every implementation once, in turn (interleaved, ``timing.interleaved_ms``), so a change of
machine load hits them all alike; the table gives medians over rounds and ratios to OpenCV.
"The reference" is the torch guided filter the reference implementation calls (DeepGuidedFilter's
``GuidedFilter``: box sums by cumsum, ``diff_x``/``diff_y`` slicing and ``torch.cat``), copied below.
Outputs are checked to agree (ours vs OpenCV inside a 2r border, where OpenCV pads instead of truncating).
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict

import numpy as np
import torch

from segtricks.method.guided_filter import guided_filter
from timing import interleaved_ms  # benchmarks/timing.py (the script's folder is on sys.path)


def _diff_x(x: torch.Tensor, r: int) -> torch.Tensor:
    left = x[:, :, r:2 * r + 1]
    middle = x[:, :, 2 * r + 1:] - x[:, :, :-2 * r - 1]
    right = x[:, :, -1:] - x[:, :, -2 * r - 1:-r - 1]
    return torch.cat([left, middle, right], dim=2)


def _diff_y(x: torch.Tensor, r: int) -> torch.Tensor:
    left = x[:, :, :, r:2 * r + 1]
    middle = x[:, :, :, 2 * r + 1:] - x[:, :, :, :-2 * r - 1]
    right = x[:, :, :, -1:] - x[:, :, :, -2 * r - 1:-r - 1]
    return torch.cat([left, middle, right], dim=3)


def reference_gf(x: torch.Tensor, y: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """DeepGuidedFilter's GuidedFilter.forward(x = guide, y = mask), as the reference calls it."""
    def box(t: torch.Tensor) -> torch.Tensor:
        return _diff_y(_diff_x(t.cumsum(dim=2), r).cumsum(dim=3), r)
    n = box(x.new_ones((1, 1, *x.shape[-2:])))
    mean_x, mean_y = box(x) / n, box(y) / n
    a = (box(x * y) / n - mean_x * mean_y) / (box(x * x) / n - mean_x * mean_x + eps)
    b = mean_y - a * mean_x
    return box(a) / n * x + box(b) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    import cv2  # opencv-contrib-python-headless (test extra): cv2.ximgproc.guidedFilter

    rng = np.random.default_rng(0)
    s, r, eps = args.size, 9, 1e-3
    img = rng.random((s, s, 3), dtype=np.float32)
    mask = rng.random((s, s), dtype=np.float32)
    gray = img.mean(-1)
    t_img, t_mask = torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(mask)[None, None]
    b_img, b_mask = t_img.repeat(8, 1, 1, 1), t_mask.repeat(8, 1, 1, 1)
    t_gray, b_gray = t_img.mean(1, keepdim=True), b_img.mean(1, keepdim=True)
    ours = guided_filter(t_mask, t_img, r, eps)[0, 0].numpy()
    ocv = cv2.ximgproc.guidedFilter(gray, mask, r, eps)
    agree = float(np.abs(ours - ocv)[2 * r:-2 * r, 2 * r:-2 * r].max())
    cases: Dict[str, Callable[[], object]] = {
        "OpenCV ximgproc, per mask": lambda: cv2.ximgproc.guidedFilter(gray, mask, r, eps),
        "reference torch GF, batch 1": lambda: reference_gf(t_gray, t_mask, r, eps),
        "ours, batch 1": lambda: guided_filter(t_mask, t_img, r, eps),
        "reference torch GF, batch 8 (per mask)": lambda: reference_gf(b_gray, b_mask, r, eps),
        "ours, batch 8 (per mask)": lambda: guided_filter(b_mask, b_img, r, eps),
    }
    print(f"guided filter, {s}×{s} mask, r={r}, eps={eps}; torch {torch.__version__}; "
          f"ours vs OpenCV inside the border: max |Δ| = {agree:.1e}\n")
    print(f"| what | threads | ms per mask (median of {args.rounds}) | vs OpenCV | vs reference, same batch |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        cv2.setNumThreads(threads)  # the Timer sets torch's
        times = interleaved_ms(cases, args.rounds, threads)
        med = {k: statistics.median(v) / (8 if "batch 8" in k else 1) for k, v in times.items()}
        for name, value in med.items():
            ref = med["reference torch GF, batch 8 (per mask)" if "batch 8" in name else "reference torch GF, batch 1"]
            versus = f"{ref / value:.2f}× faster" if name.startswith("ours") else ""
            print(f"| {name} | {threads} | {value:.2f} | {value / med['OpenCV ximgproc, per mask']:.2f}× | {versus} |")


if __name__ == "__main__":
    main()
