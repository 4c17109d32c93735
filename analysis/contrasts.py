"""The contrasts of an ablation table: each trick cell against its baseline, paired on images and seeds.

For each contrast, dataset and metric: Δ = trick − baseline; a 95% BCa bootstrap interval over images;
the two-sided p of a paired sign-flip test; Holm's adjustment across every contrast of the table; and,
with several training seeds, the per-seed Δs with their t-interval (``analysis.statistics``).

The baseline of a trick cell is the cell of the grid whose config is the same but for ``tricks: []``
(same backbone, data, schedule and seed), unless the grid's ``table:`` declares ``contrasts:``. Images
are paired by id: only images both cells scored count (``n_images``). Seeds are paired by value.
Evidence comes from the runs' per-image records (IoU, Acc, MAE, CorLoc hits) and per-image F curves
(the dataset-level ``max_fbeta``), through ``Evidence``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis.statistics import (LEVEL, RESAMPLES, MaxOfMeanCurve, MeanDifference, bca_interval, holm,
                                 paired_seed_means, seed_interval, sign_flip_p)

# Per-image evidence of each metric: a column of the records (scaled), or the F curves.
RECORD_COLUMNS = {"iou": ("iou", 1.0), "acc": ("acc", 1.0), "mae": ("mae", 1.0), "corloc": ("corloc_hit", 100.0)}
CURVE_METRICS = ("max_fbeta",)
SUPPORTED = tuple(RECORD_COLUMNS) + CURVE_METRICS
ALPHA = 0.05


@dataclass(frozen=True)
class Contrast:
    trick: str  # cell name
    baseline: str

    @property
    def name(self) -> str:
        return f"{self.trick} vs {self.baseline}"


# (cell, seed, dataset, metric) -> per-image evidence indexed by image id: a Series of scores, or a
# DataFrame of curves (one row per image); None when that run has none.
Evidence = Callable[[str, str, str, str], Optional[pd.DataFrame | pd.Series]]


def default_contrasts(cells: Dict[str, Tuple[Sequence[str], str]]) -> List[Contrast]:
    """``cells``: name → (tricks, hash of its config with ``tricks: []``). Each cell with tricks gets
    the cell without any whose cleared hash is the same."""
    baselines = {key: name for name, (tricks, key) in cells.items() if not tricks}
    return [Contrast(name, baselines[key]) for name, (tricks, key) in cells.items() if tricks and key in baselines]


def _paired(evidence: Evidence, contrast: Contrast, seeds: Sequence[str], dataset: str,
            metric: str) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], int]:
    """Per seed, the two cells' evidence on the images both have in every seed (in one order)."""
    pairs = []
    for seed in seeds:
        t, b = evidence(contrast.trick, seed, dataset, metric), evidence(contrast.baseline, seed, dataset, metric)
        if t is not None and b is not None:
            pairs.append((t, b))
    if not pairs:
        return [], 0
    common = pairs[0][0].index
    for t, b in pairs:
        common = common.intersection(t.index).intersection(b.index)
    common = common.sort_values()
    return [(t.loc[common].to_numpy(float), b.loc[common].to_numpy(float)) for t, b in pairs], len(common)


def contrast_rows(contrasts: Sequence[Contrast], seeds_of: Callable[[str], List[str]], datasets: Sequence[str],
                  metrics: Sequence[str], evidence: Evidence, resamples: int = RESAMPLES) -> pd.DataFrame:
    """One row per (contrast, dataset, metric) with evidence: Δ, ci_low/ci_high (images), p, p_holm,
    n_images, n_seeds, the seed-level mean and interval, and a note."""
    rows = []
    for contrast in contrasts:
        seeds = sorted(set(seeds_of(contrast.trick)) & set(seeds_of(contrast.baseline)))
        for dataset in datasets:
            for metric in (m for m in metrics if m in SUPPORTED):
                pairs, n_images = _paired(evidence, contrast, seeds, dataset, metric)
                if n_images < 2:
                    continue
                kind = MaxOfMeanCurve if metric in CURVE_METRICS else MeanDifference
                stat = kind(*paired_seed_means(pairs))
                low, high = bca_interval(stat, resamples)
                per_seed = seed_interval([kind(t, b).estimate() for t, b in pairs])
                rows.append({"contrast": contrast.name, "trick": contrast.trick, "baseline": contrast.baseline,
                             "dataset": dataset, "metric": metric, "delta": stat.estimate(),
                             "ci_low": low, "ci_high": high, "p": sign_flip_p(stat, resamples),
                             "n_images": n_images, "n_seeds": len(pairs), "seed_mean": per_seed.mean,
                             "seed_ci_low": per_seed.low, "seed_ci_high": per_seed.high,
                             "note": per_seed.note or ""})
    table = pd.DataFrame(rows, columns=["contrast", "trick", "baseline", "dataset", "metric", "delta", "ci_low",
                                        "ci_high", "p", "p_holm", "n_images", "n_seeds", "seed_mean",
                                        "seed_ci_low", "seed_ci_high", "note"])
    table["p_holm"] = holm(table["p"].to_numpy(float)) if len(table) else []
    return table


def significant(row) -> bool:
    return bool(row.p_holm < ALPHA)


def method_note(table: pd.DataFrame, resamples: int = RESAMPLES) -> str:
    """What the contrasts' columns are, for a caption: the test, the resampling unit, the resamples and
    the seed count."""
    seeds = sorted(set(table["n_seeds"])) if len(table) else [0]
    note = (f"Δ = trick − baseline on the images both cells scored (unit: image); {int(LEVEL * 100)}% BCa bootstrap "
            f"interval over images ({resamples} resamples); p: two-sided paired sign-flip permutation test "
            f"({resamples} permutations); p_holm: Holm-adjusted across the table's {len(table)} contrasts; "
            f"* marks p_holm < {ALPHA}. Seeds per contrast: {', '.join(map(str, seeds))}")
    if len(table) and table["n_seeds"].max() >= 2:
        note += ("; with several seeds, per-image scores are averaged over seeds, and seed_mean/seed_ci give the "
                 "between-seed t-interval (unit: training seed)")
    if len(table) and table["n_seeds"].min() < 3:
        note += ("; with fewer than 3 seeds a between-seed interval is meaningless: the image-level interval says "
                 "whether these models differ on these images, not whether the trick helps as a training procedure")
    return note + "."
