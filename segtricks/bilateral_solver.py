"""Fast bilateral solver (Barron & Poole, ECCV 2016) in vectorised torch, SPEC §5.

Same construction as the code TokenCut, MOVE and FOUND use: pixels are splatted onto the vertices
of a 5-D (x, y, luma, chroma-u, chroma-v) grid, the grid is blurred with a [1 2 1] kernel along each
axis, bistochastised, and the smoothness-regularised least-squares system

    (λ (D_m − D_n B D_n) + diag(S c)) y = S (c ⊙ t)

is solved by Jacobi-preconditioned conjugate gradients; the output is the solution sliced back to
pixels. Defaults: σ_spatial 16, σ_luma 16, σ_chroma 8, λ 256, 25 CG iterations, confidence 0.999.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

# ITU-R BT.601 RGB → YUV on [0, 255], chroma offset to be non-negative (as in the reference code).
_RGB_TO_YUV = torch.tensor([[0.299, 0.587, 0.114],
                            [-0.168736, -0.331264, 0.5],
                            [0.5, -0.418688, -0.081312]], dtype=torch.float64)
_YUV_OFFSET = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64)


@dataclass
class BilateralGrid:
    """Splat/slice and blur operators of one image's bilateral grid, as index tensors."""

    vertex_of_pixel: torch.Tensor  # (P,) vertex index of each pixel
    n_vertices: int
    neighbours: List[Tuple[torch.Tensor, torch.Tensor]]  # per (axis, ±1): (vertex, its neighbour)

    @classmethod
    def from_image(cls, image: torch.Tensor, sigma_spatial: float, sigma_luma: float,
                   sigma_chroma: float) -> "BilateralGrid":
        """image: (3, H, W) RGB with values in [0, 255]."""
        _, h, w = image.shape
        dev = image.device
        yuv = torch.einsum("chw,dc->hwd", image.double(), _RGB_TO_YUV.to(dev)) + _YUV_OFFSET.to(dev)
        yy, xx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        # Truncation toward zero as the reference's astype(int); every coordinate is ≥ 0 here.
        coords = torch.stack([
            (xx / sigma_spatial).long(), (yy / sigma_spatial).long(),
            (yuv[..., 0] / sigma_luma).long(), (yuv[..., 1] / sigma_chroma).long(),
            (yuv[..., 2] / sigma_chroma).long(),
        ], dim=-1).reshape(-1, 5) + 1  # +1 so that a −1 offset never reaches a negative coordinate
        # Mixed-radix hash, exact for any image size (the reference assumes coordinates < 255).
        radix = coords.max(dim=0).values + 2
        place = torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), dim=0)
        hashes = coords @ place
        unique, vertex_of_pixel = torch.unique(hashes, sorted=True, return_inverse=True)
        neighbours = []
        for axis in range(5):
            for step in (-1, 1):
                target = unique + step * place[axis]
                pos = torch.searchsorted(unique, target).clamp(max=len(unique) - 1)
                found = unique[pos] == target
                neighbours.append((found.nonzero().squeeze(1), pos[found]))
        return cls(vertex_of_pixel, len(unique), neighbours)

    def splat(self, x: torch.Tensor) -> torch.Tensor:
        """Sum pixel values (P,) into their vertices (V,)."""
        return torch.zeros(self.n_vertices, dtype=x.dtype, device=x.device).index_add_(
            0, self.vertex_of_pixel, x)

    def slice(self, y: torch.Tensor) -> torch.Tensor:
        """Read each pixel's value (P,) from its vertex."""
        return y[self.vertex_of_pixel]

    def blur(self, y: torch.Tensor) -> torch.Tensor:
        """[1 2 1] blur along each of the 5 axes, summed: 2·5·y + Σ neighbours."""
        out = 10.0 * y
        for vertex, neighbour in self.neighbours:
            out = out.index_add(0, vertex, y[neighbour])
        return out


def bistochastize(grid: BilateralGrid, iterations: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Diagonals (n, m) such that diag(n)·B·diag(n) has the row sums m of the splatted pixel counts."""
    m = grid.splat(torch.ones(grid.vertex_of_pixel.numel(), dtype=torch.float64,
                              device=grid.vertex_of_pixel.device))
    n = torch.ones_like(m)
    for _ in range(iterations):
        n = torch.sqrt(n * m / grid.blur(n))
    return n, n * grid.blur(n)


def bilateral_solve(target: torch.Tensor, image: torch.Tensor, sigma_spatial: float = 16,
                    sigma_luma: float = 16, sigma_chroma: float = 8, lam: float = 256,
                    cg_iterations: int = 25, cg_tol: float = 1e-5, confidence: float = 0.999,
                    a_diag_min: float = 1e-5) -> torch.Tensor:
    """Edge-aware smoothing of one map. target: (H, W); image: (3, H, W) in [0, 255]. → (H, W).

    CG stops after ``cg_iterations`` or when ‖r‖ ≤ cg_tol·‖b‖ (scipy's rule). Runs in float64.
    """
    grid = BilateralGrid.from_image(image, sigma_spatial, sigma_luma, sigma_chroma)
    n, m = bistochastize(grid)
    t = target.reshape(-1).double()
    c = torch.full_like(t, confidence)
    c_splat = grid.splat(c)
    b = grid.splat(c * t)

    def apply_a(y: torch.Tensor) -> torch.Tensor:
        return lam * (m * y - n * grid.blur(n * y)) + c_splat * y

    diag = lam * (m - 10.0 * n * n) + c_splat  # B's own diagonal is 2·5 (the central elements)
    inv_precond = 1.0 / diag.clamp(min=a_diag_min)
    y = b / c_splat  # flat initialisation: the confidence-weighted mean of each vertex
    r = b - apply_a(y)
    z = inv_precond * r
    p = z.clone()
    rz = r @ z
    stop = cg_tol * torch.linalg.vector_norm(b)
    for _ in range(cg_iterations):
        if torch.linalg.vector_norm(r) <= stop:
            break
        ap = apply_a(p)
        alpha = rz / (p @ ap)
        y = y + alpha * p
        r = r - alpha * ap
        z = inv_precond * r
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
    return grid.slice(y).reshape(target.shape).to(target.dtype)


def bilateral_solver_filter(mask: torch.Tensor, image: torch.Tensor, **params) -> torch.Tensor:
    """Batched post-processing: mask (B, 1, H, W) in [0, 1], image (B, 3, H, W) in [0, 1].

    Each image has its own grid, so the batch is a loop over images; the output is clamped to [0, 1].
    """
    out = [bilateral_solve(mk[0], im * 255.0, **params) for mk, im in zip(mask, image)]
    return torch.stack(out).unsqueeze(1).clamp(0, 1)
