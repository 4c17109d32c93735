"""Bilateral solver speed: ours vs the reference's numpy/scipy solver, as same-run ratios.

    python benchmarks/bilateral_solver.py [--repeats N] [--images K] [--size 320]

The golden-style case: K SOD300 images (../shared/data/sod300) resized to size×size, each with its
DSS saliency map as the soft mask; σ spatial/luma/chroma 16/16/8, λ 256, 25 CG iterations. "The
reference" is the BilateralGrid/BilateralSolver that TokenCut, MOVE and FOUND ship (sparse splat and
per-axis blur matrices, np.unique hashing, scipy.sparse.linalg.cg with a Jacobi preconditioner), with
only the I/O stripped: tests/reference_bilateral_solver.py, which the tests compare against. On each
image, each repeat runs the reference, ``bilateral_solve`` (float64 image in [0, 255], as the reference
gets) and ``bilateral_solver_filter`` (float32 in [0, 1], as the evaluation calls it) once, in turn
(interleaved, in reverse order every other repeat: ``timing.interleaved_ms``), so a change of machine
load hits all alike. The table gives medians per mask with torch at 1 and at 2 threads
(``torch.utils.benchmark.Timer``'s ``num_threads``), the ratio reference / ours, and the largest
|bilateral_solve − reference| over all pixels. The profile rows, timed in a second interleaved loop,
split ``bilateral_solve`` into the grid (hashing, splat/slice indices, CSR blur matrix,
bistochastisation) and the rest (the system, its CG solve and the slice back to pixels).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import torch
from PIL import Image

from segtricks.method.bilateral_solver import SparseBilateralGrid, bilateral_solve, bilateral_solver_filter, bistochastize
from timing import interleaved_ms  # benchmarks/timing.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from reference_bilateral_solver import reference_bilateral_solve  # noqa: E402  (tests/, on sys.path above)

SOD = REPO.parent / "shared" / "data" / "sod300"
SIGMAS = dict(sigma_spatial=16, sigma_luma=16, sigma_chroma=8)
class Case(NamedTuple):
    im: np.ndarray  # (H, W, 3) float64 in [0, 255], as the reference reads it
    target: np.ndarray  # (H, W) soft mask in [0, 1]
    image: torch.Tensor  # (3, H, W) float64 in [0, 255], for bilateral_solve
    mask: torch.Tensor  # (H, W) float64
    batch: Tuple[torch.Tensor, torch.Tensor]  # (1, 1, H, W), (1, 3, H, W) float32 in [0, 1], for the filter


def load_cases(count: int, size: int) -> List[Case]:
    cases = []
    for path in sorted((SOD / "images").glob("*.jpg"))[:count]:
        im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        soft = Image.open(SOD / "maps" / "DSS" / f"{path.stem}.png").convert("L").resize((size, size), Image.BILINEAR)
        im, soft = np.asarray(im).astype(np.float64), np.asarray(soft) / 255.0
        image, mask = torch.from_numpy(im).permute(2, 0, 1).contiguous(), torch.from_numpy(soft)
        cases.append(Case(im, soft, image, mask, (mask[None, None].float(), image[None].float() / 255)))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args()
    if not SOD.is_dir():
        raise SystemExit(f"{SOD} is absent: this benchmark needs ../shared/data/sod300 beside the repo")
    cases = load_cases(args.images, args.size)
    diff = max(float(np.abs(bilateral_solve(c.mask, c.image).numpy() - reference_bilateral_solve(c.im, c.target)).max())
               for c in cases)
    solvers: Dict[str, Callable[[Case], object]] = {
        "reference (numpy/scipy)": lambda c: reference_bilateral_solve(c.im, c.target),
        "ours: bilateral_solve": lambda c: bilateral_solve(c.mask, c.image),
        "ours: bilateral_solver_filter, float32": lambda c: bilateral_solver_filter(*c.batch),
    }
    profile: Dict[str, Callable[[Case], object]] = {
        "profile of bilateral_solve: grid": lambda c: bistochastize(SparseBilateralGrid.from_image(c.image.numpy(), **SIGMAS)),
        "profile of bilateral_solve: all": lambda c: bilateral_solve(c.mask, c.image),
    }

    print(f"bilateral solver, {len(cases)} SOD300 images at {args.size}² with DSS maps as soft masks, "
          f"σ 16/16/8, λ 256, 25 CG iterations; torch {torch.__version__}; {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.1f}; max |ours − reference| = {diff:.1e}\n")
    print(f"| what | threads | ms per mask (median of {args.repeats}×{len(cases)}) | reference / ours |")
    print("|---|---|---|---|")
    for threads in (1, 2):
        med = {}
        for group in (solvers, profile):
            times: Dict[str, list] = {name: [] for name in group}
            for case in cases:
                for name, t in interleaved_ms({name: lambda fn=fn, c=case: fn(c) for name, fn in group.items()},
                                              args.repeats, threads).items():
                    times[name] += t
            med.update({name: statistics.median(v) for name, v in times.items()})
        med["profile of bilateral_solve: system + CG + slice (all − grid)"] = (
            med["profile of bilateral_solve: all"] - med["profile of bilateral_solve: grid"])
        for name, value in med.items():
            ratio = f"{med['reference (numpy/scipy)'] / value:.1f}× faster" if name in solvers and "ours" in name else ""
            print(f"| {name} | {threads} | {value:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
