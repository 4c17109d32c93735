"""Sempart's unsupervised losses (docs/method.md#losses), each a documented pure function of tensors.

Shapes: masks are (B, 1, h, w) in [0, 1]; features are (B, C, h, w) backbone keys; images are
(B, 3, H, W). All losses return a scalar averaged over the batch.

Every loss computes in float32, whatever the dtype of its inputs: under bf16 autocast the model's
masks and features are bfloat16, which keeps about 3 significant digits, too few for NCut's ratios
cut/assoc of sums over N² products, the cosines compared with τ, and TV's exp(−D/σ) of squared
differences. So inputs are cast to float32 here, and the matrix products run with autocast disabled
(autocast runs a matmul in bf16 even on float32 inputs, when a loss is called inside its region).
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

# The 8 directed neighbour offsets (dy, dx) of a pixel: each undirected edge is counted twice,
# as the reference computes graph-TV (docs/method.md#losses).
NEIGHBOURS: Tuple[Tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in float32, also inside an autocast region (see the module docstring)."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float()


def thresholded_affinity(features: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """W_ij = 1 where cos(f_i, f_j) > tau, else eps. (B, C, h, w) → (B, N, N) with N = h·w."""
    f = F.normalize(features.flatten(2).float(), dim=1)
    cos = _matmul_fp32(f.transpose(1, 2), f)
    return torch.where(cos > tau, torch.ones_like(cos), torch.full_like(cos, eps))


def ncut_loss(mask: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Soft normalized cut of the two-way partition (s, 1−s) of a graph with weights W.

    cut = sᵀW(1−s), assoc(s) = sᵀW1; L = cut/assoc(s) + cut/assoc(1−s), batch mean. The mask is
    clamped to [1e-6, 1−1e-6] so that neither side is ever empty.
    """
    s = mask.flatten(1).float().clamp(1e-6, 1 - 1e-6)
    affinity = affinity.float()
    degree = affinity.sum(-1)
    cut = (s * _matmul_fp32(affinity, (1 - s).unsqueeze(-1)).squeeze(-1)).sum(-1)
    assoc_fg = (s * degree).sum(-1)
    assoc_bg = ((1 - s) * degree).sum(-1)
    return (cut / assoc_fg + cut / assoc_bg).mean()


def graph_tv(mask: torch.Tensor, guide: torch.Tensor,
             edge_weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Graph-TV as the reference computes it (docs/method.md#losses): mean over (b, 8, h, w) of w_pq·(s_p − s_q)².

    Every pixel p has 8 directed neighbours q; at the border mask and guide are reflect-padded
    (mirrored without repeating the edge pixel), so border pixels have 8 neighbours too.
    ``edge_weight(g_p, g_q)`` maps the guide values of both ends (B, C, h, w) to weights (B, 1, h, w).
    Squared differences make a constant mask a stationary point (value 0, gradient 0).
    """
    b, _, h, w = mask.shape
    mask, guide = mask.float(), guide.float()
    mask_pad = F.pad(mask, (1, 1, 1, 1), mode="reflect")
    guide_pad = F.pad(guide, (1, 1, 1, 1), mode="reflect")
    total = mask.new_zeros(())
    for dy, dx in NEIGHBOURS:
        window = (..., slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        total = total + (edge_weight(guide, guide_pad[window]) * (mask - mask_pad[window]) ** 2).sum()
    return total / (b * len(NEIGHBOURS) * h * w)


def fine_graph_tv(fine: torch.Tensor, image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Graph-TV of the fine mask, edges weighted exp(−D_I / σ), D_I = Σ_c (I_c(p) − I_c(q))², on the
    ImageNet-normalised image. σ, not σ²: the reference's definition (they agree only at σ = 1)."""
    return graph_tv(fine, image, lambda a, b: torch.exp(-((a - b) ** 2).sum(1, keepdim=True) / sigma))


def coarse_graph_tv(coarse: torch.Tensor, features: torch.Tensor, tau: float,
                    eps: float) -> torch.Tensor:
    """Graph-TV of the coarse mask, edge weight 1 where cos(f_p, f_q) > tau, else eps.

    With f unit-normalised per position, cos(f_p, f_q) = 1 − ‖f_p − f_q‖²/2, as the reference computes it.
    """
    f = F.normalize(features.float(), dim=1)

    def weight(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cos = 1 - ((a - b) ** 2).sum(1, keepdim=True) / 2
        return torch.where(cos > tau, torch.ones_like(cos), torch.full_like(cos, eps))

    return graph_tv(coarse, f, weight)


def coarse_fine_consistency(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """MSE between the coarse mask and the fine mask bilinearly resized to the coarse grid."""
    down = F.interpolate(fine.float(), size=coarse.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(coarse.float(), down)
