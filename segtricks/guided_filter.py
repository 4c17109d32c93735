"""He et al.'s guided filter on batched torch tensors (CPU or CUDA), SPEC §5.

Box means use cumulative sums with truncated windows at the borders (each output pixel averages
only the pixels of its window that lie inside the image), so the result needs no padding rule.
"""
from __future__ import annotations

import torch


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)² window around each pixel, windows truncated at the image border."""
    return _box_sum(x, radius) / _box_sum(torch.ones_like(x[:1, :1]), radius)


def _box_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    # Separable: a 1-D windowed sum along H, then along W; each by one cumsum, so the
    # accumulated magnitude stays at one image side (better float32 accuracy than a 2-D table).
    for dim in (-2, -1):
        n = x.shape[dim]
        c = torch.cumsum(x, dim=dim)
        c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
        idx = torch.arange(n, device=x.device)
        hi = (idx + r + 1).clamp(max=n)
        lo = (idx - r).clamp(min=0)
        x = c.index_select(dim, hi) - c.index_select(dim, lo)
    return x


def guided_filter_gray(src: torch.Tensor, guide: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """The guided filter with a single-channel guide. src, guide: (B, 1, H, W); returns (B, 1, H, W).

    a = cov(I, p) / (var(I) + eps), b = mean(p) − a·mean(I), q = mean(a)·I + mean(b).
    """
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(src, radius)
    cov_ip = box_mean(guide * src, radius) - mean_i * mean_p
    var_i = box_mean(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
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
    dtype = mask.dtype
    m = mask.float()
    guide = image.float().mean(dim=1, keepdim=True)
    guide = guide - guide.mean(dim=(2, 3), keepdim=True)
    mu = m.mean(dim=(2, 3), keepdim=True)
    sd = m.std(dim=(2, 3), keepdim=True) + 1e-6
    out = guided_filter_gray((m - mu) / sd, guide, radius, eps)
    return (out * sd + mu).to(dtype)
