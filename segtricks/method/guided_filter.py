"""He et al.'s guided filter on batched torch tensors (CPU or CUDA), docs/method.md#post-processing-gf-and-bf.

Box means use truncated windows at the borders (each output pixel averages only the pixels of its
window that lie inside the image), so the result needs no padding rule.

Two paths, the same numbers (to float32 rounding; tests hold them to each other and to a float64
brute force): on CPU without autograd, ``segtricks.method.guided_filter_numpy`` (OpenCV box filters and
in-place numpy arithmetic on reused planes, which stay in cache; it imports no torch, so scoring
saliency maps calls it directly); on CUDA, or when gradients are needed, torch ops: two cumulative
sums per box filter with the window differences sliced out, the window-count normaliser computed
once per (size, radius, device). Timings: benchmarks/guided_filter.py.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from segtricks.method.guided_filter_numpy import guided_filter_planes, inverse_counts


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)² window around each pixel of (B, C, H, W), windows truncated at the border."""
    h, w = x.shape[-2:]
    return _window_sums(_window_sums(x, radius, -2), radius, -1) * _inverse_counts(h, w, radius, x.device, x.dtype)


def _window_sums(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum over i−r … i+r along ``dim`` (truncated at both ends), from one cumulative sum c:
    c[i+r] for i ≤ r, c[i+r] − c[i−r−1] inside, c[n−1] − c[i−r−1] for i ≥ n−r."""
    n = x.shape[dim]
    c = torch.cumsum(x, dim=dim)
    if n < 2 * r + 2:  # small images, where one window can reach both borders: clamped indices
        c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
        idx = torch.arange(n, device=x.device)
        return c.index_select(dim, (idx + r + 1).clamp(max=n)) - c.index_select(dim, (idx - r).clamp(min=0))
    return torch.cat([c.narrow(dim, r, r + 1),
                      c.narrow(dim, 2 * r + 1, n - 2 * r - 1) - c.narrow(dim, 0, n - 2 * r - 1),
                      c.narrow(dim, n - 1, 1) - c.narrow(dim, n - 2 * r - 1, r)], dim=dim)


@lru_cache(maxsize=64)
def _inverse_counts(h: int, w: int, r: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1 / (pixels of each truncated window), (H, W), on ``device``."""
    return torch.from_numpy(inverse_counts(h, w, r)).to(device=device, dtype=dtype)


def guided_filter_gray(src: torch.Tensor, guide: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """The guided filter with a single-channel guide, in torch ops (any device, differentiable).
    src, guide: (B, 1, H, W); returns (B, 1, H, W).

    a = cov(I, p) / (var(I) + eps), b = mean(p) − a·mean(I), q = mean(a)·I + mean(b).
    """
    mean_i, mean_p = box_mean(guide, radius), box_mean(src, radius)
    a = (box_mean(guide * src, radius) - mean_i * mean_p) / (box_mean(guide * guide, radius) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius) * guide + box_mean(b, radius)


def guided_filter(mask: torch.Tensor, image: torch.Tensor, radius: int = 9,
                  eps: float = 1e-3) -> torch.Tensor:
    """Filter a soft mask (B, 1, H, W) guided by an image (B, 3, H, W) with values in [0, 1].

    The guide is the mean of the RGB channels. As in the reference, the mask is standardised per
    image (unbiased std + 1e-6) before filtering and its mean/std restored after: the filter is
    affine-equivariant in the mask, so this changes only the floating-point conditioning. The guide is
    centred per image for the same reason (the filter is invariant to a shift of the guide).
    """
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} and guide image {tuple(image.shape)} differ in size")
    needs_grad = torch.is_grad_enabled() and (mask.requires_grad or image.requires_grad)
    if mask.device.type == "cpu" and image.device.type == "cpu" and not needs_grad:
        return _guided_filter_opencv(mask, image, radius, eps)
    dtype = mask.dtype
    m = mask.float()
    guide = image.float().mean(dim=1, keepdim=True)
    guide = guide - guide.mean(dim=(2, 3), keepdim=True)
    mu = m.mean(dim=(2, 3), keepdim=True)
    sd = m.std(dim=(2, 3), keepdim=True) + 1e-6
    out = guided_filter_gray((m - mu) / sd, guide, radius, eps)
    return (out * sd + mu).to(dtype)


def _guided_filter_opencv(mask: torch.Tensor, image: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """``guided_filter`` on CPU: per image, OpenCV box sums and in-place float32 numpy arithmetic on
    reused planes (they stay in cache; torch ops on whole batches do not)."""
    masks = mask.detach().float().contiguous().numpy()
    images = image.detach().float().contiguous().numpy()
    return torch.from_numpy(guided_filter_planes(masks[:, 0], images, radius, eps)[:, None]).to(mask.dtype)
