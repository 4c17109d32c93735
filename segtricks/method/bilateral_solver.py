"""Fast bilateral solver (Barron & Poole, ECCV 2016), docs/method.md#post-processing-gf-and-bf.

Same construction as the code TokenCut, MOVE and FOUND use: pixels are splatted onto the vertices
of a 5-D (x, y, luma, chroma-u, chroma-v) grid, the grid is blurred with a [1 2 1] kernel along each
axis, bistochastised, and the smoothness-regularised least-squares system

    (λ (D_m − D_n B D_n) + diag(S c)) y = S (c ⊙ t)

is solved by Jacobi-preconditioned conjugate gradients; the output is the solution sliced back to
pixels. Defaults: σ_spatial 16, σ_luma 16, σ_chroma 8, λ 256, 25 CG iterations, confidence 0.999.

CPU/CUDA policy: one solver (``_solve``), two grid backends, chosen by the target's device.
- CPU tensors use ``SparseBilateralGrid`` (numpy; the blur is one precomputed scipy CSR matrix), with
  torch held to one thread for the call. The vectors hold a few thousand vertices, so each operation
  takes microseconds and must not pay a thread hand-off: with 2 torch threads on a busy 2-core machine
  the former all-torch solve took 4–35× longer than with 1. Pixels are binned with the reference's
  own numpy product, so a pixel on a bin boundary lands in the reference's bin and the output
  matches the reference to rounding.
- CUDA tensors use ``BilateralGrid`` (torch index tensors) and stay on the device; its einsum can put
  a pixel lying exactly on a bin boundary into the neighbouring bin (a few pixels per photograph).
  It runs in float64, as the reference (and the numpy path) does: the vectors hold a few thousand
  vertices, so the solve is bound by kernel launches, not by float64 throughput. It waits for the
  device only where a size depends on the data (``unique``, ``nonzero``: about 12 times per image),
  never in the CG loop, and uses no integer matrix product (CUDA has none).
  ``benchmarks/gpu.py`` times it against the numpy path on the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple, TypeVar

import numpy as np
import torch
from scipy.sparse import csr_array

from segtricks.runtime.threads import one_thread

# ITU-R BT.601 RGB → YUV on [0, 255], chroma offset to be non-negative (as in the reference code).
_RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                        [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]])
_YUV_OFFSET = np.array([0.0, 128.0, 128.0])

Vector = TypeVar("Vector", np.ndarray, torch.Tensor)


@dataclass
class BilateralGrid:
    """Splat/slice and blur operators of one image's bilateral grid, as torch index tensors."""

    vertex_of_pixel: torch.Tensor  # (P,) vertex index of each pixel
    n_vertices: int
    neighbours: List[Tuple[torch.Tensor, torch.Tensor]]  # per (axis, ±1): (vertex, its neighbour)

    @classmethod
    def from_image(cls, image: torch.Tensor, sigma_spatial: float, sigma_luma: float,
                   sigma_chroma: float) -> "BilateralGrid":
        """image: (3, H, W) RGB with values in [0, 255]."""
        _, h, w = image.shape
        dev = image.device
        rgb_to_yuv, yuv_offset = torch.from_numpy(_RGB_TO_YUV).to(dev), torch.from_numpy(_YUV_OFFSET).to(dev)
        yuv = torch.einsum("chw,dc->hwd", image.double(), rgb_to_yuv) + yuv_offset
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
        hashes = (coords * place).sum(dim=1)  # not coords @ place: CUDA has no integer matrix product
        unique, vertex_of_pixel = torch.unique(hashes, sorted=True, return_inverse=True)
        neighbours = []
        for axis in range(5):
            for step in (-1, 1):
                target = unique + step * place[axis]
                pos = torch.searchsorted(unique, target).clamp(max=len(unique) - 1)
                found = unique[pos] == target
                neighbours.append((found.nonzero().squeeze(1), pos[found]))
        return cls(vertex_of_pixel, len(unique), neighbours)

    @property
    def counts(self) -> torch.Tensor:
        """Pixels per vertex (V,), float64: the splat of ones."""
        return torch.bincount(self.vertex_of_pixel, minlength=self.n_vertices).double()

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


@dataclass
class SparseBilateralGrid:
    """The same grid in numpy: splat by bincount, blur by one precomputed CSR adjacency matrix."""

    vertex_of_pixel: np.ndarray  # (P,) vertex index of each pixel
    counts: np.ndarray  # (V,) pixels per vertex, float64
    adjacency: csr_array  # (V, V) 1 where two vertices are neighbours along one axis

    @classmethod
    def from_image(cls, image: np.ndarray, sigma_spatial: float, sigma_luma: float,
                   sigma_chroma: float) -> "SparseBilateralGrid":
        """image: (3, H, W) RGB with values in [0, 255]."""
        _, h, w = image.shape
        rgb = image.reshape(3, -1)
        # Bins truncate toward zero as the reference's astype(int) (the int32 assignment below, too).
        x = (np.arange(w) / sigma_spatial).astype(np.int64)
        y = (np.arange(h) / sigma_spatial).astype(np.int64)
        sigmas = np.array([[sigma_luma], [sigma_chroma], [sigma_chroma]])
        # Colour bins with the reference's product (np.tensordot, i.e. BLAS): another summation order
        # can move a pixel on a bin boundary to the next bin. In blocks of 2^14 pixels: OpenBLAS computes
        # a product that small on the calling thread (its worker threads cost 30–40 ms instead of 1 ms
        # on a busy 2-core machine), and small temporaries are reused instead of paged in afresh.
        block = 2 ** 14
        luv = np.empty((3, h * w), np.int32)  # luma, u, v bins
        for i in range(0, h * w, block):
            luv[:, i:i + block] = (_RGB_TO_YUV @ rgb[:, i:i + block] + _YUV_OFFSET[:, None]) / sigmas
        # Mixed-radix hash with digits (x, y, luma, u, v), exact for any image size; a radix of max + 2
        # leaves room for the +1 neighbour of the largest coordinate, so that no neighbour carries.
        place = np.cumprod([1, x[-1] + 2, y[-1] + 2, *(luv.max(axis=1) + 2)])  # place[5]: hash bound
        hashes = place[2:5] @ luv
        hashes += (y[:, None] * place[1] + x).reshape(-1)
        # Vertices are the distinct hashes. np.unique would argsort; sorting (hash, pixel) packed into
        # one int64, in place, is faster and pages in less memory.
        bits = (h * w).bit_length()
        if place[5] > 2 ** (63 - bits):
            raise ValueError(f"a {h}×{w} image gives a grid too large to hash into 64 bits")
        hashes <<= bits
        hashes |= np.arange(h * w)
        hashes.sort()
        pixel, hashes = hashes & (2 ** bits - 1), hashes >> bits
        first = np.append(True, hashes[1:] != hashes[:-1])  # first pixel of each vertex, in hash order
        unique = hashes[first]
        counts = np.diff(np.append(np.flatnonzero(first), h * w))
        vertex_of_pixel = np.empty_like(pixel)
        vertex_of_pixel[pixel] = np.repeat(np.arange(len(unique)), counts)
        # The adjacency is symmetric: find each vertex's +1 neighbour per axis, add both directions.
        rows, cols = [], []
        for step in place[:5]:
            pos = np.searchsorted(unique, unique + step).clip(max=len(unique) - 1)
            found = np.flatnonzero(unique[pos] == unique + step)
            rows.append(found)
            cols.append(pos[found])
        rows, cols = np.concatenate(rows + cols), np.concatenate(cols + rows)
        adjacency = csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(unique), len(unique)))
        return cls(vertex_of_pixel, counts.astype(np.float64), adjacency)

    def splat(self, x: np.ndarray) -> np.ndarray:
        """Sum pixel values (P,) into their vertices (V,)."""
        return np.bincount(self.vertex_of_pixel, weights=x, minlength=len(self.counts))

    def slice(self, y: np.ndarray) -> np.ndarray:
        """Read each pixel's value (P,) from its vertex."""
        return y[self.vertex_of_pixel]

    def blur(self, y: np.ndarray) -> np.ndarray:
        """[1 2 1] blur along each of the 5 axes, summed: 2·5·y + Σ neighbours."""
        return 10.0 * y + self.adjacency @ y


def bistochastize(grid: BilateralGrid | SparseBilateralGrid, iterations: int = 10):
    """Diagonals (n, m) such that diag(n)·B·diag(n) has the row sums m of the splatted pixel counts.

    grid: a ``BilateralGrid`` (torch tensors out) or a ``SparseBilateralGrid`` (numpy arrays out).
    """
    m = grid.counts
    n = m ** 0  # ones, of m's array type
    for _ in range(iterations):
        n = (n * m / grid.blur(n)) ** 0.5
    return n, n * grid.blur(n)


def _dot(a: Vector, b: Vector) -> float | torch.Tensor:
    # Not a @ b: numpy hands that to BLAS, and OpenBLAS's ddot wakes its worker threads above 10,000
    # elements (grids of large or colourful images), which cost 4–8 ms per product on a busy machine.
    return (a * b).sum()


def _pcg(apply_a: Callable[[Vector], Vector], b: Vector, y: Vector, inv_precond: Vector,
         iterations: int, tol: float) -> Vector:
    """Preconditioned CG as scipy.sparse.linalg.cg: stops after ``iterations`` or once ‖r‖ ≤ tol·‖b‖.

    Written with operators only, so that it runs on numpy arrays and torch tensors alike. On a device
    the stopping test never goes back to the host (one wait per iteration, 25 per image): a converged
    system runs its remaining iterations with y and r frozen, which leaves the same y as stopping.
    """
    on_host = isinstance(b, np.ndarray)
    r = b - apply_a(y)
    z = inv_precond * r
    p = z
    rz = _dot(r, z)
    stop = tol * _dot(b, b) ** 0.5
    for _ in range(iterations):
        converged = _dot(r, r) ** 0.5 <= stop
        if on_host and converged:
            break
        ap = apply_a(p)
        alpha = rz / _dot(p, ap)
        if on_host:
            y, r = y + alpha * p, r - alpha * ap
        else:  # a frozen y and r also keep a 0/0 of the frozen iterations out of them
            y, r = torch.where(converged, y, y + alpha * p), torch.where(converged, r, r - alpha * ap)
        z = inv_precond * r
        rz_new = _dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return y


def _solve(grid: BilateralGrid | SparseBilateralGrid, t: Vector, lam: float, cg_iterations: int,
           cg_tol: float, confidence: float, a_diag_min: float) -> Vector:
    """The solver on either grid backend: t (P,) float64 → y (V,), in t's array type."""
    n, m = bistochastize(grid)
    c_splat = confidence * grid.counts  # S c, with one confidence for every pixel
    b = confidence * grid.splat(t)

    def apply_a(y: Vector) -> Vector:
        return lam * (m * y - n * grid.blur(n * y)) + c_splat * y

    diag = lam * (m - 10.0 * n * n) + c_splat  # B's own diagonal is 2·5 (the central elements)
    # Flat initialisation: b / S c is the mean target of each vertex.
    return _pcg(apply_a, b, b / c_splat, 1.0 / diag.clip(min=a_diag_min), cg_iterations, cg_tol)


def bilateral_solve(target: torch.Tensor, image: torch.Tensor, sigma_spatial: float = 16,
                    sigma_luma: float = 16, sigma_chroma: float = 8, lam: float = 256,
                    cg_iterations: int = 25, cg_tol: float = 1e-5, confidence: float = 0.999,
                    a_diag_min: float = 1e-5) -> torch.Tensor:
    """Edge-aware smoothing of one map. target: (H, W); image: (3, H, W) in [0, 255]. → (H, W).

    CG stops after ``cg_iterations`` or when ‖r‖ ≤ cg_tol·‖b‖ (scipy's rule). Runs in float64, in
    numpy for CPU tensors and in torch on the device otherwise (module docstring).
    """
    sigmas = sigma_spatial, sigma_luma, sigma_chroma
    on_cpu = target.device.type == "cpu"
    with one_thread(on_cpu):
        if on_cpu:
            grid = SparseBilateralGrid.from_image(image.detach().double().numpy(), *sigmas)
            t = target.detach().double().numpy().reshape(-1)
        else:
            grid = BilateralGrid.from_image(image, *sigmas)
            t = target.reshape(-1).double()
        y = _solve(grid, t, lam, cg_iterations, cg_tol, confidence, a_diag_min)
        return torch.as_tensor(grid.slice(y)).reshape(target.shape).to(target)


def bilateral_solver_filter(mask: torch.Tensor, image: torch.Tensor, **params) -> torch.Tensor:
    """Batched post-processing: mask (B, 1, H, W) in [0, 1], image (B, 3, H, W) in [0, 1].

    Each image has its own grid, so the batch is a loop over images; the output is clamped to [0, 1].
    """
    with one_thread(mask.device.type == "cpu"):
        out = [bilateral_solve(mk[0], im * 255.0, **params) for mk, im in zip(mask, image)]
        return torch.stack(out).unsqueeze(1).clamp(0, 1)
