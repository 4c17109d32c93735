"""Sempart's unsupervised losses (SPEC §3), each a documented pure function of tensors.

Shapes: masks are (B, 1, h, w) in [0, 1]; features are (B, C, h, w) backbone keys; images are
(B, 3, H, W). All losses return a scalar averaged over the batch.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

# The 8-neighbourhood as four undirected offsets (dy, dx): right, down, down-right, down-left.
NEIGHBOUR_OFFSETS: Tuple[Tuple[int, int], ...] = ((0, 1), (1, 0), (1, 1), (1, -1))


def thresholded_affinity(features: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """W_ij = 1 where cos(f_i, f_j) > tau, else eps. (B, C, h, w) → (B, N, N) with N = h·w."""
    f = F.normalize(features.flatten(2).float(), dim=1)
    cos = f.transpose(1, 2) @ f
    return torch.where(cos > tau, torch.ones_like(cos), torch.full_like(cos, eps))


def ncut_loss(mask: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Soft normalized cut of the two-way partition (s, 1−s) of a graph with weights W.

    cut = sᵀW(1−s), assoc(s) = sᵀW1; L = cut/assoc(s) + cut/assoc(1−s), batch mean. The mask is
    clamped to [1e-6, 1−1e-6] so that neither side is ever empty.
    """
    s = mask.flatten(1).float().clamp(1e-6, 1 - 1e-6)
    degree = affinity.sum(-1)
    cut = (s * (affinity @ (1 - s).unsqueeze(-1)).squeeze(-1)).sum(-1)
    assoc_fg = (s * degree).sum(-1)
    assoc_bg = ((1 - s) * degree).sum(-1)
    return (cut / assoc_fg + cut / assoc_bg).mean()


def _neighbour_pairs(t: torch.Tensor, dy: int, dx: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t_p, t_q) for every pixel p whose neighbour q = p + (dy, dx) lies inside the image."""
    h, w = t.shape[-2:]
    x0, x1 = (0, w - dx) if dx >= 0 else (-dx, w)
    return t[..., : h - dy, x0:x1], t[..., dy:, x0 + dx: x1 + dx]


def graph_tv(mask: torch.Tensor, guide: torch.Tensor,
             edge_weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Weighted total variation over the 8-neighbourhood: Σ_edges w_pq |s_p − s_q| / #pixels.

    ``edge_weight(g_p, g_q)`` maps the guide values of both ends (B, C, …) to weights (B, 1, …).
    Averaged over pixels (not summed), so the value does not grow with the resolution.
    """
    total = mask.new_zeros(mask.shape[0])
    for dy, dx in NEIGHBOUR_OFFSETS:
        m_p, m_q = _neighbour_pairs(mask, dy, dx)
        g_p, g_q = _neighbour_pairs(guide, dy, dx)
        total = total + (edge_weight(g_p, g_q) * (m_p - m_q).abs()).sum(dim=(1, 2, 3))
    return (total / mask[0, 0].numel()).mean()


def fine_graph_tv(fine: torch.Tensor, image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Graph-TV of the fine mask, edges weighted exp(−‖I_p − I_q‖² / σ²) on the normalised image."""
    return graph_tv(fine.float(), image.float(),
                    lambda a, b: torch.exp(-((a - b) ** 2).sum(1, keepdim=True) / sigma ** 2))


def coarse_graph_tv(coarse: torch.Tensor, features: torch.Tensor, tau: float,
                    eps: float) -> torch.Tensor:
    """Graph-TV of the coarse mask, edge weight 1 where cos(f_p, f_q) > tau, else eps."""
    f = F.normalize(features.float(), dim=1)

    def weight(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cos = (a * b).sum(1, keepdim=True)
        return torch.where(cos > tau, torch.ones_like(cos), torch.full_like(cos, eps))

    return graph_tv(coarse.float(), f, weight)


def coarse_fine_consistency(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """MSE between the coarse mask and the fine mask bilinearly resized to the coarse grid."""
    down = F.interpolate(fine.float(), size=coarse.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(coarse.float(), down)
