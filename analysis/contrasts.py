"""The contrasts of an ablation table: each trick cell against its baseline, paired on images and seeds.

For each contrast, dataset and metric: Δ = trick − baseline; a 95% BCa bootstrap interval over images;
the two-sided p of a paired sign-flip test; Holm's adjustment across every contrast of the table; and,
with several training seeds, the per-seed Δs with their t-interval (``analysis.statistics``).

The baseline of a trick cell is the cell of the grid whose config is the same but for ``tricks: []``
(same backbone, data and schedule), unless the grid's ``table:`` declares ``contrasts:``. Images are
paired by id: only images both cells scored count (``n_images``). Seeds are paired by value.
Evidence comes from the runs' per-image records (IoU, Acc, MAE, CorLoc hits) and per-image F curves
(the dataset-level ``max_fbeta``), through an ``Evidence`` callable (``analysis.runs.RunEvidence``).
A contrast whose evidence is missing (runs logged before per-image F curves were kept, a cell not
evaluated on a dataset) is left out of the table with a note saying which and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from analysis.statistics import (LEVEL, MIN_SEEDS, RESAMPLES, MaxOfMeanCurve, MeanDifference, bca_intervals, holm,
                                 paired_seed_means, seed_interval, sign_flip_ps)
from segtricks.config.grid import GridFile, baseline_keys
from segtricks.config.vocabulary import METRICS

# Per-image evidence of each metric: a column of the records (``MetricSpec.record``, scaled as the run's
# metric by ``MetricSpec.scale``), or the F curves.
RECORD_METRICS = tuple(name for name, m in METRICS.items() if m.record)
CURVE_METRICS = ("max_fbeta",)
SUPPORTED = RECORD_METRICS + CURVE_METRICS
ALPHA = 0.05
COLUMNS = ["contrast", "trick", "baseline", "dataset", "metric", "delta", "ci_low", "ci_high", "p", "p_holm",
           "n_images", "n_seeds", "seeds", "seed_deltas", "seed_mean", "seed_ci_low", "seed_ci_high", "note"]


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
    the first cell without any whose cleared hash is the same."""
    baselines: Dict[str, str] = {}
    for name, (tricks, key) in cells.items():
        if not tricks:
            baselines.setdefault(key, name)
    return [Contrast(name, baselines[key]) for name, (tricks, key) in cells.items() if tricks and key in baselines]


def grid_contrasts(grid: GridFile) -> List[Contrast]:
    """The contrasts of a grid's table: those its ``table:`` declares, else the default rule."""
    declared = grid.table.contrasts if grid.table is not None else ()
    if declared:
        return [Contrast(trick, baseline) for trick, baseline in declared]
    return default_contrasts(baseline_keys(grid))


def _paired(evidence: Evidence, contrast: Contrast, seeds: Sequence[str], dataset: str,
            metric: str) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], int, List[str]]:
    """Per seed, the two cells' evidence on the images both have in every seed (in one order), and
    the cells (with their seed) that have none."""
    pairs, missing = [], []
    for seed in seeds:
        t, b = evidence(contrast.trick, seed, dataset, metric), evidence(contrast.baseline, seed, dataset, metric)
        missing += [f"{cell}{f' (seed {seed})' if len(seeds) > 1 else ''}"
                    for cell, found in ((contrast.trick, t), (contrast.baseline, b)) if found is None]
        if t is not None and b is not None:
            pairs.append((t, b))
    if missing or not pairs:
        return [], 0, missing
    common = pairs[0][0].index
    for t, b in pairs:
        common = common.intersection(t.index).intersection(b.index)
    common = common.sort_values()
    return [(t.loc[common].to_numpy(float), b.loc[common].to_numpy(float)) for t, b in pairs], len(common), missing


def _left_out(contrast: Contrast, dataset: str, metric: str, missing: List[str]) -> str:
    what = (f"per-image F curves (curves/{dataset}.npz; runs logged before they were kept have none: rerun "
            f"those cells for this contrast)" if metric in CURVE_METRICS
            else f"per-image {metric} records (records/{dataset}.csv)")
    return f"{metric} of {contrast.name} on {dataset} left out: {', '.join(missing)} logged no {what}"


def contrast_rows(contrasts: Sequence[Contrast], seeds_of: Callable[[str], List[str]], datasets: Sequence[str],
                  metrics: Sequence[str], evidence: Evidence,
                  resamples: int = RESAMPLES) -> Tuple[pd.DataFrame, List[str]]:
    """One row per (contrast, dataset, metric) with evidence: Δ, ci_low/ci_high (images), p, p_holm,
    n_images, n_seeds, the seeds, the per-seed Δs with their mean and interval, and a note; and the
    notes on what was left out. The statistics of all rows share their resamples (``bca_intervals``)."""
    rows, stats = [], []
    notes = [f"{m}: no per-image evidence is logged for it, hence no contrast" for m in metrics if m not in SUPPORTED]
    for contrast in contrasts:
        seeds = sorted(set(seeds_of(contrast.trick)) & set(seeds_of(contrast.baseline)))
        if not seeds:
            notes.append(f"{contrast.name} left out: no seed has a FINISHED run of both cells")
            continue
        for dataset in datasets:
            for metric in (m for m in metrics if m in SUPPORTED):
                pairs, n_images, missing = _paired(evidence, contrast, seeds, dataset, metric)
                if missing:
                    notes.append(_left_out(contrast, dataset, metric, missing))
                    continue
                if n_images < 2:
                    notes.append(f"{metric} of {contrast.name} on {dataset} left out: {n_images} image(s) scored "
                                 f"by both cells")
                    continue
                kind = MaxOfMeanCurve if metric in CURVE_METRICS else MeanDifference
                stats.append(kind(*paired_seed_means(pairs)))
                per_seed = seed_interval([kind(t, b).estimate() for t, b in pairs])
                rows.append({"contrast": contrast.name, "trick": contrast.trick, "baseline": contrast.baseline,
                             "dataset": dataset, "metric": metric, "delta": stats[-1].estimate(),
                             "n_images": n_images, "n_seeds": len(pairs), "seeds": " ".join(seeds),
                             "seed_deltas": " ".join(f"{d:+.6g}" for d in per_seed.deltas),
                             "seed_mean": per_seed.mean, "seed_ci_low": per_seed.low, "seed_ci_high": per_seed.high,
                             "note": per_seed.note or ""})
    table = pd.DataFrame(rows, columns=COLUMNS)
    if rows:
        table[["ci_low", "ci_high"]] = np.array(bca_intervals(stats, resamples))
        table["p"] = sign_flip_ps(stats, resamples)
        table["p_holm"] = holm(table["p"].to_numpy(float))
    return table, notes


def with_seed_columns(table: pd.DataFrame) -> bool:
    """Whether the table shows the between-seed picture: some contrast has at least 2 seeds."""
    return bool(len(table) and table["n_seeds"].max() >= 2)


def method_note(table: pd.DataFrame, resamples: int = RESAMPLES) -> str:
    """What the contrasts' columns are, for a caption: the test, the resampling unit, the resamples and
    the seed count."""
    seeds = sorted(set(table["n_seeds"])) if len(table) else [0]
    lower = [METRICS[m].label for m in set(table["metric"]) if METRICS[m].lower_is_better]
    note = (f"Δ = trick − baseline on the images both cells scored (unit: image); {int(LEVEL * 100)}% BCa bootstrap "
            f"interval over images ({resamples} resamples); p: two-sided paired sign-flip permutation test "
            f"({resamples} permutations); p_holm: Holm-adjusted across the table's {len(table)} contrasts; "
            f"* marks p_holm < {ALPHA}. Seeds per contrast: {', '.join(map(str, seeds))}")
    if lower:
        note += f" ({', '.join(lower)}: lower is better, a gain is a negative Δ)"
    if with_seed_columns(table):
        note += ("; with several seeds, per-image scores are averaged over seeds, and seed_mean/seed_ci give the "
                 "between-seed t-interval (unit: training seed)")
    if len(table) and table["n_seeds"].min() < MIN_SEEDS:
        note += (f"; with fewer than {MIN_SEEDS} seeds a between-seed interval is meaningless: the image-level "
                 "interval says whether these models differ on these images, not whether the trick helps as a "
                 "training procedure")
    return note + "."
