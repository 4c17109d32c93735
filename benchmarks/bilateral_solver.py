"""Bilateral solver speed: ours vs the reference's numpy/scipy solver, as same-run ratios.

    python benchmarks/bilateral_solver.py [--repeats N] [--images K] [--size 320]

The golden-style case: K SOD300 images (../shared/data/sod300) resized to size×size, each with its
DSS saliency map as the soft mask; σ spatial/luma/chroma 16/16/8, λ 256, 25 CG iterations. "The
reference" is the BilateralGrid/BilateralSolver that TokenCut, MOVE and FOUND ship (sparse splat and
per-axis blur matrices, np.unique hashing, scipy.sparse.linalg.cg with a Jacobi preconditioner),
copied below with only the I/O stripped. Each repeat runs the reference, ``bilateral_solve`` (float64
image in [0, 255], as the reference gets) and ``bilateral_solver_filter`` (float32 in [0, 1], as the
evaluation calls it) once per image, in turn (interleaved, in reverse order every other repeat), so a
change of machine load hits all alike. The table gives medians per mask with torch at 1 and at 2
threads, the ratio reference / ours, and the largest |bilateral_solve − reference| over all pixels. The profile rows, timed in a second interleaved
loop, split ``bilateral_solve`` into the grid (hashing, splat/slice indices, CSR blur matrix,
bistochastisation) and the rest (the system, its CG solve and the slice back to pixels).
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import torch
from PIL import Image
from scipy.sparse import csr_matrix, diags
from scipy.sparse.linalg import cg

from segtricks.bilateral_solver import SparseBilateralGrid, bilateral_solve, bilateral_solver_filter, bistochastize
from timing import ms  # benchmarks/timing.py (the script's folder is on sys.path)

SOD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sod300"
SIGMAS = dict(sigma_spatial=16, sigma_luma=16, sigma_chroma=8)
MAX_VAL = 255.0
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


class ReferenceGrid:
    """The reference's BilateralGrid."""

    def __init__(self, im: np.ndarray, sigma_spatial: float, sigma_luma: float, sigma_chroma: float):
        im_yuv = np.tensordot(im, RGB_TO_YUV, ([2], [1])) + np.array([0, 128.0, 128.0])
        iy, ix = np.mgrid[:im.shape[0], :im.shape[1]]
        coords = np.dstack(((ix / sigma_spatial).astype(int), (iy / sigma_spatial).astype(int),
                            (im_yuv[..., 0] / sigma_luma).astype(int),
                            (im_yuv[..., 1:] / sigma_chroma).astype(int)))
        coords_flat = coords.reshape(-1, coords.shape[-1])
        self.npixels, self.dim = coords_flat.shape
        self.hash_vec = MAX_VAL ** np.arange(self.dim)
        hashed = coords_flat @ self.hash_vec
        unique_hashes, unique_idx, idx = np.unique(hashed, return_index=True, return_inverse=True)
        unique_coords = coords_flat[unique_idx]
        self.nvertices = len(unique_coords)
        self.S = csr_matrix((np.ones(self.npixels), (idx, np.arange(self.npixels))))
        self.blurs = []
        for d in range(self.dim):
            blur = 0.0
            for offset in (-1, 1):
                offset_vec = np.zeros((1, self.dim))
                offset_vec[:, d] = offset
                neighbour_hash = (unique_coords + offset_vec) @ self.hash_vec
                locs = np.clip(np.searchsorted(unique_hashes, neighbour_hash), 0, len(unique_hashes) - 1)
                valid = np.flatnonzero(unique_hashes[locs] == neighbour_hash)
                blur = blur + csr_matrix((np.ones(len(valid)), (valid, locs[valid])),
                                         shape=(self.nvertices, self.nvertices))
            self.blurs.append(blur)

    def splat(self, x):
        return self.S.dot(x)

    def slice(self, y):
        return self.S.T.dot(y)

    def blur(self, x):
        out = 2 * self.dim * x
        for blur in self.blurs:
            out = out + blur.dot(x)
        return out


def reference_bilateral_solve(im: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The reference's bistochastize + BilateralSolver.solve, as bilateral_solver_output calls it."""
    grid = ReferenceGrid(im, **SIGMAS)
    m = grid.splat(np.ones(grid.npixels))
    n = np.ones(grid.nvertices)
    for _ in range(10):
        n = np.sqrt(n * m / grid.blur(n))
    m = n * grid.blur(n)
    dn, dm = diags(n, 0), diags(m, 0)
    x = target.reshape(-1, 1).astype(np.double)
    w = np.full_like(x, 0.999)
    w_splat = grid.splat(w)
    a = 256 * (dm - dn.dot(grid.blur(dn))) + diags(w_splat[:, 0], 0)
    b = grid.splat(x * w)
    precond = diags(1 / np.maximum(a.diagonal(), 1e-5), 0)
    y, _ = cg(a, b[:, 0], x0=(b / w_splat)[:, 0], M=precond, maxiter=25, rtol=1e-5)
    return grid.slice(y).reshape(target.shape)


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
        torch.set_num_threads(threads)
        med = {}
        for group in (solvers, profile):
            times: Dict[str, list] = {name: [] for name in group}
            for case in cases:  # warm-up
                for fn in group.values():
                    fn(case)
            for repeat in range(args.repeats):
                for case in cases:
                    # alternate the order: whatever runs right after the reference finds cold caches
                    for name, fn in list(group.items())[::1 if repeat % 2 else -1]:
                        times[name].append(ms(lambda: fn(case)))
            med.update({name: statistics.median(v) for name, v in times.items()})
        med["profile of bilateral_solve: system + CG + slice (all − grid)"] = (
            med["profile of bilateral_solve: all"] - med["profile of bilateral_solve: grid"])
        for name, value in med.items():
            ratio = f"{med['reference (numpy/scipy)'] / value:.1f}× faster" if name in solvers and "ours" in name else ""
            print(f"| {name} | {threads} | {value:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
