"""The second generalised eigenvector of a graph, (D − A) x = λ D x: the normalized-cut relaxation that
TokenCut and Deep Spectral split patches with.

Three solvers give the same vector up to their precision (tested against TokenCut's own outputs):
- ``dense``, the reference path: ``scipy.linalg.eigh(D − A, D, subset_by_index=[1, 2])``, LAPACK's
  generalised symmetric solver, as TokenCut calls it (Deep Spectral's ARPACK shift-invert solves the
  same problem). O(N³): about 1 s for ViT-S/8's 1,850 tokens of a 400×300 image.
- ``arpack``: the symmetric normalised form M = D^-1/2 A D^-1/2, whose eigenvalues are 1 − λ, by ARPACK
  (``scipy.sparse.linalg.eigsh``, the two largest, from a fixed start vector so that it is
  deterministic), mapped back by x = D^-1/2 y before anything thresholds it: a mean threshold is not
  invariant to that scaling. A few hundred matrix-vector products instead of a cubic factorisation.
- ``torch``: ``torch.linalg.eigh`` of the same M in float64 on the affinity's device (a GPU's batched
  dense solver).
``auto`` is ``arpack`` on the CPU and ``torch`` on CUDA (``benchmarks/methods.py`` times them).
Every vector is returned normalised as scipy's are, xᵀDx = 1; its sign is the caller's to fix.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch

SOLVERS = ("auto", "dense", "arpack", "torch")


def solver_for(name: str, device: torch.device) -> str:
    """The solver ``auto`` stands for on ``device``."""
    if name != "auto":
        return name
    return "torch" if device.type == "cuda" else "arpack"


def second_eigenvector(affinity: torch.Tensor, degree: torch.Tensor, solver: str = "auto") -> np.ndarray:
    """x of the second smallest λ of (D − A) x = λ D x, D = diag(``degree``); ``affinity`` (N, N)
    symmetric with non-negative entries, float64. Returns (N,) float64 with xᵀDx = 1."""
    solver = solver_for(solver, affinity.device)
    if solver == "dense":
        a, d = affinity.cpu().numpy(), degree.cpu().numpy()
        _, vectors = scipy.linalg.eigh(np.diag(d) - a, np.diag(d), subset_by_index=[1, 2])
        return vectors[:, 0]
    scale = degree.rsqrt()
    normalised = scale[:, None] * affinity * scale[None, :]  # eigenvalues 1 − λ, the trivial one first
    if solver == "torch":
        _, vectors = torch.linalg.eigh(normalised)  # ascending: the trivial eigenvector last
        y = vectors[:, -2]
    elif solver == "arpack":
        m = normalised.cpu().numpy()
        start = np.random.default_rng(0).standard_normal(len(m))  # ARPACK's default start is random
        _, vectors = scipy.sparse.linalg.eigsh(m, k=2, which="LA", v0=start, tol=1e-12)
        y = torch.from_numpy(vectors[:, 0])  # ascending: the second largest of M first
    else:
        raise ValueError(f"unknown eigensolver {solver!r}; one of {', '.join(SOLVERS)}")
    x = (scale.cpu() * y.cpu()).numpy()
    return x / np.sqrt(np.sum(degree.cpu().numpy() * x * x))
