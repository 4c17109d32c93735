"""He et al.'s guided filter on numpy planes with OpenCV box sums, docs/method.md#post-processing-gf-and-bf; imports no torch.

The CPU path of ``segtricks.method.guided_filter`` (which documents the filter) and the one that scoring
saliency maps uses (``segtricks.evaluation.saliency_maps``): each image is filtered with OpenCV's box filter
(``cv2.boxFilter`` unnormalised with zero borders = the truncated window sum) and in-place float32
numpy arithmetic on reused planes, which stay in cache.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=64)
def inverse_counts(h: int, w: int, r: int) -> np.ndarray:
    """1 / (pixels of each truncated window), (H, W) float64: separable, a row count times a column count."""
    def counts(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        return np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1
    return 1.0 / (counts(h)[:, None] * counts(w)[None, :])


def guided_filter_planes(masks: np.ndarray, images: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """The guided filter of float32 masks (B, H, W) guided by the mean RGB of float32 images
    (B, 3, H, W) in [0, 1]; returns (B, H, W) float32. The mask and guide are standardised and centred
    per image as ``segtricks.method.guided_filter.guided_filter`` says."""
    out = np.empty_like(masks)
    planes = _planes(*masks.shape[-2:], radius)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # a 320² box filter is too small to share: OpenCV's pool made it 4× slower here
    try:
        for m, rgb, q in zip(masks, images, out):
            planes.filter(m, rgb, eps, q)
    finally:
        cv2.setNumThreads(threads)
    return out


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
        self.inv = inverse_counts(h, w, radius).astype(np.float32)
        self.window = (2 * radius + 1, 2 * radius + 1)
        self.g, self.p, self.mean_i, self.mean_p, self.a, self.b, self.tmp = (np.empty_like(self.inv) for _ in range(7))

    def box_mean(self, x: np.ndarray, dst: np.ndarray) -> None:
        cv2.boxFilter(x, -1, self.window, dst=dst, normalize=False, borderType=cv2.BORDER_CONSTANT)
        np.multiply(dst, self.inv, out=dst)

    def filter(self, m: np.ndarray, rgb: np.ndarray, eps: float, q: np.ndarray) -> None:
        """q ← the guided filter of mask m (H, W) with guide mean(rgb), as
        ``segtricks.method.guided_filter.guided_filter``."""
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
