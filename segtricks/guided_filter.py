"""He et al.'s guided filter on batched torch tensors (CPU or CUDA), SPEC §5.

Box means use truncated windows at the borders (each output pixel averages only the pixels of its
window that lie inside the image), so the result needs no padding rule.

Two paths, the same numbers (to float32 rounding; tests hold them to each other and to a float64
brute force): on CPU without autograd, each image is filtered with OpenCV's box filter
(``cv2.boxFilter`` unnormalised with zero borders = the truncated window sum) and in-place numpy
arithmetic on reused planes, which stay in cache; on CUDA, or when gradients are needed, torch ops:
two cumulative sums per box filter with the window differences sliced out, the window-count
normaliser computed once per (size, radius, device). Timings: benchmarks/guided_filter.py.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import cv2
import numpy as np
import torch


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
    """1 / (pixels of each truncated window), (H, W): separable, a row count times a column count."""
    def counts(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        return (i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1
    return (1.0 / (counts(h)[:, None] * counts(w)[None, :])).to(device=device, dtype=dtype)


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
    out = np.empty_like(masks)
    planes = _planes(*masks.shape[-2:], radius)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # a 320² box filter is too small to share: OpenCV's pool made it 4× slower here
    try:
        for m, rgb, q in zip(masks[:, 0], images, out[:, 0]):
            planes.filter(m, rgb, eps, q)
    finally:
        cv2.setNumThreads(threads)
    return torch.from_numpy(out).to(mask.dtype)


_SCRATCH = threading.local()  # per thread: the scratch planes of the last sizes filtered


def _planes(h: int, w: int, radius: int) -> "_Planes":
    """Scratch planes for this size, reused across calls (fresh pages cost more than the arithmetic)."""
    cache = _SCRATCH.__dict__.setdefault("planes", {})
    key = (h, w, radius)
    if key not in cache:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = _Planes(h, w, radius)
    return cache[key]


class _Planes:
    """Scratch planes of one image size, reused for every image of a batch."""

    def __init__(self, h: int, w: int, radius: int) -> None:
        self.inv = _inverse_counts(h, w, radius, torch.device("cpu"), torch.float32).numpy()
        self.window = (2 * radius + 1, 2 * radius + 1)
        self.g, self.p, self.mean_i, self.mean_p, self.a, self.b, self.tmp = (np.empty_like(self.inv) for _ in range(7))

    def box_mean(self, x: np.ndarray, dst: np.ndarray) -> None:
        cv2.boxFilter(x, -1, self.window, dst=dst, normalize=False, borderType=cv2.BORDER_CONSTANT)
        np.multiply(dst, self.inv, out=dst)

    def filter(self, m: np.ndarray, rgb: np.ndarray, eps: float, q: np.ndarray) -> None:
        """q ← the guided filter of mask m (H, W) with guide mean(rgb), as ``guided_filter``."""
        g, p, mean_i, mean_p, a, b, tmp = self.g, self.p, self.mean_i, self.mean_p, self.a, self.b, self.tmp
        np.add(rgb[0], rgb[1], out=g)
        g += rgb[2]
        g *= 1 / 3
        g -= float(g.mean(dtype=np.float64))  # a Python float keeps the arithmetic in float32
        mu = float(m.mean(dtype=np.float64))
        np.subtract(m, mu, out=p)
        flat = p.reshape(-1)  # unbiased std from a dot product: no temporary array
        sd = float(np.sqrt(np.dot(flat, flat) / max(flat.size - 1, 1))) + 1e-6
        p /= sd
        self.box_mean(g, mean_i)
        self.box_mean(p, mean_p)
        np.multiply(g, p, out=tmp)
        self.box_mean(tmp, a)
        np.multiply(mean_i, mean_p, out=tmp)
        a -= tmp  # cov(I, p)
        np.multiply(g, g, out=tmp)
        self.box_mean(tmp, b)
        np.multiply(mean_i, mean_i, out=tmp)
        b -= tmp
        b += eps  # var(I) + eps
        a /= b
        np.multiply(a, mean_i, out=tmp)
        np.subtract(mean_p, tmp, out=b)  # b = mean(p) − a·mean(I)
        self.box_mean(a, mean_i)
        self.box_mean(b, mean_p)
        np.multiply(mean_i, g, out=q)
        q += mean_p
        q *= sd
        q += mu
