"""The reference implementation's bilateral solver in numpy/scipy: what tests/test_bilateral_solver.py
compares ``segtricks.method.bilateral_solver`` against, and what benchmarks/bilateral_solver.py times it against.

It is the BilateralGrid/BilateralSolver that TokenCut, MOVE and FOUND ship (sparse splat and per-axis
blur matrices, np.unique hashing, bistochastisation, scipy.sparse.linalg.cg with a Jacobi
preconditioner), with only the I/O stripped; it shares no code with segtricks.method.bilateral_solver. It
lives beside the tests, which import it as they import helpers (pytest puts this folder on sys.path);
the benchmark script adds the folder to its own sys.path.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.sparse import csr_matrix, diags, spmatrix
from scipy.sparse.linalg import cg

MAX_VAL = 255.0
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


class ReferenceGrid:
    """The reference's BilateralGrid of an (H, W, 3) float64 image in [0, 255]."""

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


def reference_system(im: np.ndarray, target: np.ndarray, sigma_spatial: float = 16, sigma_luma: float = 16,
                     sigma_chroma: float = 8, lam: float = 256.0
                     ) -> Tuple[spmatrix, np.ndarray, spmatrix, np.ndarray]:
    """(A, b, S, y0) of the reference's bistochastize + BilateralSolver for the soft mask ``target``
    ((H, W) in [0, 1]) on the grid of ``im``, confidence 0.999 everywhere: A y = b on the grid's
    vertices, S splats pixels onto vertices (Sᵀ slices back), y0 the reference's CG start."""
    grid = ReferenceGrid(im, sigma_spatial, sigma_luma, sigma_chroma)
    m = grid.splat(np.ones(grid.npixels))
    n = np.ones(grid.nvertices)
    for _ in range(10):
        n = np.sqrt(n * m / grid.blur(n))
    m = n * grid.blur(n)
    dn, dm = diags(n, 0), diags(m, 0)
    x = target.reshape(-1, 1).astype(np.double)
    w = np.full_like(x, 0.999)
    w_splat = grid.splat(w)
    a = lam * (dm - dn.dot(grid.blur(dn))) + diags(w_splat[:, 0], 0)
    b = grid.splat(x * w)
    return a, b[:, 0], grid.S, (b / w_splat)[:, 0]


def reference_bilateral_solve(im: np.ndarray, target: np.ndarray, cg_iterations: int = 25) -> np.ndarray:
    """The reference's output for ``target`` as bilateral_solver_output computes it (σ 16/16/8, λ 256):
    ``cg_iterations`` of Jacobi-preconditioned CG (tolerance 1e-5) from y0, sliced back to pixels."""
    a, b, s, y0 = reference_system(im, target)
    precond = diags(1 / np.maximum(a.diagonal(), 1e-5), 0)
    y, _ = cg(a, b, x0=y0, M=precond, maxiter=cg_iterations, rtol=1e-5)
    return s.T.dot(y).reshape(target.shape)
