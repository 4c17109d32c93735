"""The embedded synthetic dataset: one textured object on a textured background, with its mask.

Pretrained weights and the paper's datasets cannot be downloaded on an offline machine, and
weight-free ViT features do not segment real photos, so the demo and the tests train on this.
Every item is a pure function of (seed, split, index): nothing is stored, and two machines see the
same images. Objects span a wide range of sizes (target object ratio log-uniform in
[AREA_MIN, AREA_MAX]; bars and rings come out thinner), so the object-size plots have content;
two fifths are thin bars or rings. Object and background colours differ clearly and the background
texture is milder than the object's, so that the task is one NCut on weight-free features can learn.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

SPLIT_SIZES = {"train": 2000, "val": 200, "test": 200}
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # disjoint random streams per split
SHAPES = ("ellipse", "rectangle", "polygon", "bar", "ring")
AREA_MIN, AREA_MAX = 0.03, 0.6


def _texture(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, colour: np.ndarray,
             max_amp: float) -> np.ndarray:
    """A colour with oriented stripes of random frequency and a little pixel noise, (H, W, 3)."""
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 14), rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.0, max_amp)
    stripes = amp * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    tint = rng.uniform(-1, 1, 3)
    noise = rng.normal(0, 0.03, x.shape + (3,))
    return colour + stripes[..., None] * tint + noise


def _shape_mask(rng: np.random.Generator, kind: str, x: np.ndarray, y: np.ndarray,
                area: float) -> np.ndarray:
    cx, cy = rng.uniform(0.25, 0.75, 2)
    angle = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    aspect = rng.uniform(0.4, 1.0)
    if kind == "ellipse":
        a = np.sqrt(area / (np.pi * aspect))
        return (u / a) ** 2 + (v / (a * aspect)) ** 2 <= 1
    if kind == "rectangle":
        w = np.sqrt(area / aspect)
        return (np.abs(u) <= w / 2) & (np.abs(v) <= w * aspect / 2)
    if kind == "polygon":  # star-shaped: radius varies smoothly with the polar angle
        k = rng.integers(3, 8)
        radii = rng.uniform(0.5, 1.0, k)
        phi = np.mod(np.arctan2(v, u), 2 * np.pi) / (2 * np.pi) * k
        i = np.floor(phi).astype(int)
        r = radii[i % k] * (1 - (phi - i)) + radii[(i + 1) % k] * (phi - i)
        scale = np.sqrt(area / (np.pi * np.mean(radii ** 2)))
        return np.hypot(u, v) <= r * scale
    if kind == "bar":  # thin structure: 2–5% of the side wide
        width = rng.uniform(0.02, 0.05)
        length = min(area / width, 1.2)
        return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
    # ring: an annulus whose thickness is a third of the outer radius
    outer = np.sqrt(area / (np.pi * (1 - (2 / 3) ** 2)))
    rad = np.hypot(u, v / aspect)
    return (rad <= outer) & (rad >= outer * 2 / 3)


def render(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (size, size, 3), mask bool (size, size)) pair."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    bg_colour = rng.uniform(0.05, 0.95, 3)
    while True:  # the object's colour must differ clearly from the background's
        fg_colour = rng.uniform(0.05, 0.95, 3)
        if np.linalg.norm(fg_colour - bg_colour) > 0.5:
            break
    kind = SHAPES[rng.integers(len(SHAPES))]
    for _ in range(20):  # redraw the rare shape that falls almost entirely outside the image
        mask = _shape_mask(rng, kind, x, y, float(np.exp(rng.uniform(np.log(AREA_MIN), np.log(AREA_MAX)))))
        if mask.sum() >= 9:
            break
    image = np.where(mask[..., None], _texture(rng, x, y, fg_colour, 0.2), _texture(rng, x, y, bg_colour, 0.1))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask
