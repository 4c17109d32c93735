"""Paired statistics of a contrast between two cells scored on the same images: is the gain real?

A contrast compares a trick cell with its baseline on the same images (and seeds). Each image gives a
pair of scores; the resampling unit is the image. Two kinds of statistic:

- ``MeanDifference``: the mean over images of a per-image score (IoU, Acc, MAE, CorLoc hits);
- ``MaxOfMeanCurve``: a dataset-level statistic, the max over thresholds of the image-averaged F curve
  (the paper's ``max_fbeta``), from each image's F curve at the 255 thresholds.

Both are written as functions of per-image *weights* (how often a resample draws each image), so one
matrix product evaluates thousands of resamples, and a sign-flip permutation is a weight too (a
flipped image swaps its trick and baseline curves). On them:

- ``bca_interval``: a bias-corrected and accelerated bootstrap interval (Efron 1987), as
  ``scipy.stats.bootstrap(method="BCa", paired=True)`` computes it (tests/test_statistics.py checks
  that both agree within Monte-Carlo error), with a jackknife that costs one pass for both statistics;
- ``sign_flip_p``: the two-sided p-value of a paired sign-flip permutation test (the null: trick and
  baseline are exchangeable on every image), as ``scipy.stats.permutation_test(permutation_type=
  "samples")``;
- ``holm``: Holm's step-down adjustment across the contrasts of a table;
- ``seed_interval``: with several training seeds, the t-interval of the per-seed differences: the unit
  for "does this trick beat that one as a training procedure".

A table's statistics are evaluated together (``bca_intervals``, ``sign_flip_ps``): the resamples of n
images are drawn once and shared by every statistic over n images, each getting the draws it would get
alone. Drawing them costs more than applying them to a per-image mean, so a table of many contrasts
costs little more than one per dataset (and about 2.5 s per max_fbeta contrast of 5,000 images).

Numpy and scipy only (no torch). Fixed seeds: a table is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import special, stats

RESAMPLES = 9999  # bootstrap resamples and sign-flip permutations per contrast
LEVEL = 0.95
CHUNK = 256  # resamples evaluated per matrix product (memory: CHUNK × images weights)


class MeanDifference:
    """Δ = mean over images of (trick − baseline), from per-image scores (n_images,) of each cell."""

    def __init__(self, trick: np.ndarray, baseline: np.ndarray) -> None:
        self.diff = np.asarray(trick, float) - np.asarray(baseline, float)
        self.n = len(self.diff)

    def estimate(self) -> float:
        return float(self.diff.mean())

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """Δ of each resample (rows of ``weights``: how many times each image is drawn, summing to n)."""
        return weights @ self.diff / self.n

    def flipped(self, signs: np.ndarray) -> np.ndarray:
        """Δ with each image's pair swapped where ``signs`` is −1 (rows: permutations)."""
        return signs @ self.diff / self.n

    def jackknife(self) -> np.ndarray:
        """Δ with each image left out in turn."""
        return (self.diff.sum() - self.diff) / (self.n - 1)


class MaxOfMeanCurve:
    """Δ = max_t mean_i trick_i(t) − max_t mean_i baseline_i(t), per-image curves (n_images, thresholds):
    the dataset-level ``max_fbeta`` of the paper, recomputed on any resample of images."""

    def __init__(self, trick: np.ndarray, baseline: np.ndarray) -> None:
        self.trick, self.baseline = np.asarray(trick, np.float64), np.asarray(baseline, np.float64)
        self.n = len(self.trick)
        self._pooled = (self.trick + self.baseline).sum(0) / (2 * self.n)  # what sign flips leave unchanged
        self._diff = self.trick - self.baseline

    def estimate(self) -> float:
        return float(self.trick.mean(0).max() - self.baseline.mean(0).max())

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        return (weights @ self.trick).max(1) / self.n - (weights @ self.baseline).max(1) / self.n

    def flipped(self, signs: np.ndarray) -> np.ndarray:
        # an image whose sign is −1 gives its trick curve to the baseline and its baseline curve to the
        # trick: both mean curves are the pooled mean ± half the signed mean difference
        half = signs @ self._diff / (2 * self.n)
        return (self._pooled + half).max(1) - (self._pooled - half).max(1)

    def jackknife(self) -> np.ndarray:
        left_t = (self.trick.sum(0) - self.trick) / (self.n - 1)
        left_b = (self.baseline.sum(0) - self.baseline) / (self.n - 1)
        return left_t.max(1) - left_b.max(1)


Statistic = MeanDifference | MaxOfMeanCurve


def bootstrap_weights(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` resamples of n images with replacement, as draw counts per image (count, n)."""
    picks = rng.integers(0, n, (count, n)) + n * np.arange(count)[:, None]
    return np.bincount(picks.ravel(), minlength=count * n).reshape(count, n).astype(np.float64)


def sign_flips(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random relabellings of n image pairs: +1 keeps an image's pair, −1 swaps it (count, n)."""
    return rng.choice([-1.0, 1.0], (count, n))


def shared_draws(stats: Sequence[Statistic], draw: Callable[[int, int, np.random.Generator], np.ndarray],
                 evaluate: Callable[[Statistic, np.ndarray], np.ndarray], count: int, seed: int) -> List[np.ndarray]:
    """``evaluate(stat, draws)`` of each statistic on ``count`` draws (``draw(n, chunk, rng)``), drawn
    once per image count from ``seed`` and shared by the statistics of that count, CHUNK at a time."""
    out: List[List[np.ndarray]] = [[] for _ in stats]
    for n in dict.fromkeys(stat.n for stat in stats):
        same = [i for i, stat in enumerate(stats) if stat.n == n]
        rng = np.random.default_rng(seed)
        for done in range(0, count, CHUNK):
            draws = draw(n, min(CHUNK, count - done), rng)
            for i in same:
                out[i].append(evaluate(stats[i], draws))
    return [np.concatenate(parts) for parts in out]


def bca_from(stat: Statistic, boot: np.ndarray, level: float) -> Tuple[float, float]:
    """The BCa interval of ``stat`` from its bootstrap distribution (scipy.stats.bootstrap's formulas:
    the bias correction from the share of resamples below the estimate, the acceleration from the
    jackknife)."""
    theta = stat.estimate()
    z0 = special.ndtri(((boot < theta).sum() + (boot <= theta).sum()) / (2 * len(boot)))
    jack = stat.jackknife()
    dev = jack.mean() - jack
    denominator = 6 * (dev ** 2).sum() ** 1.5
    accel = (dev ** 3).sum() / denominator if denominator > 0 else 0.0
    alpha = (1 - level) / 2
    bounds = []
    for z in (special.ndtri(alpha), special.ndtri(1 - alpha)):
        shifted = z0 + (z0 + z) / (1 - accel * (z0 + z))
        bounds.append(np.percentile(boot, 100 * special.ndtr(shifted)) if np.isfinite(shifted) else np.nan)
    return float(bounds[0]), float(bounds[1])


def bca_intervals(stats: Sequence[Statistic], resamples: int = RESAMPLES, level: float = LEVEL,
                  seed: int = 0) -> List[Tuple[float, float]]:
    """The BCa bootstrap interval over images of each statistic's Δ (each as ``bca_interval`` alone)."""
    boots = shared_draws(stats, bootstrap_weights, lambda stat, w: stat.resampled(w), resamples, seed)
    return [bca_from(stat, boot, level) for stat, boot in zip(stats, boots)]


def bca_interval(stat: Statistic, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> Tuple[float, float]:
    """The BCa bootstrap interval of Δ over images."""
    return bca_intervals([stat], resamples, level, seed)[0]


def sign_flip_ps(stats: Sequence[Statistic], permutations: int = RESAMPLES, seed: int = 0) -> List[float]:
    """Two-sided p of the paired sign-flip test of each statistic: the share of random swaps of each
    image's pair whose |Δ| reaches the observed |Δ| (the observed labelling counted, as permutation
    tests do)."""
    flipped = shared_draws(stats, sign_flips, lambda stat, signs: stat.flipped(signs), permutations, seed)
    ps = []
    for stat, null in zip(stats, flipped):
        observed = abs(stat.estimate())
        tolerance = 1e-12 * max(1.0, observed)  # ties by rounding count as reaching it
        ps.append((int((np.abs(null) >= observed - tolerance).sum()) + 1) / (permutations + 1))
    return ps


def sign_flip_p(stat: Statistic, permutations: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p of the paired sign-flip test of one statistic."""
    return sign_flip_ps([stat], permutations, seed)[0]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control across the table's contrasts):
    the i-th smallest p times (m − i + 1), made monotone, capped at 1. NaN entries are left out."""
    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class SeedSummary:
    """The between-seed picture of a contrast: Δ per seed, their mean and t-interval (NaN below 2
    seeds), and ``note`` when too few seeds make the interval meaningless."""

    deltas: Tuple[float, ...]
    mean: float
    low: float
    high: float
    note: Optional[str]


MIN_SEEDS = 3


def seed_interval(deltas: Sequence[float], level: float = LEVEL) -> SeedSummary:
    d = np.asarray(deltas, float)
    n = len(d)
    mean = float(d.mean()) if n else np.nan
    low = high = np.nan
    if n >= 2:
        half = stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
        low, high = mean - half, mean + half
    note = None if n >= MIN_SEEDS else (
        f"{n} seed{'s' if n != 1 else ''}: a between-seed interval needs at least {MIN_SEEDS} seeds to mean "
        f"anything; only the image-level interval (this model against that one on these images) applies")
    return SeedSummary(tuple(map(float, d)), mean, float(low), float(high), note)


def paired_seed_means(per_seed: List[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image scores averaged over the seeds both cells have (the same images in the same order in
    each pair): the image-level contrast of several seeds pairs each image with itself."""
    trick = np.mean([t for t, _ in per_seed], axis=0)
    baseline = np.mean([b for _, b in per_seed], axis=0)
    return trick, baseline
