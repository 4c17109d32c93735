"""IoU against object size (paper Fig. 6–8) from per-image records."""
from __future__ import annotations

from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.paper import DATASET_LABELS  # noqa: E402

BINS = 20  # equal bins of the object ratio over [0, 1]


def size_bins(records: pd.DataFrame) -> pd.DataFrame:
    """Per cell and bin: mean IoU and image count. Bin i holds ratios in [i/20, (i+1)/20) (1.0 in the last)."""
    b = np.minimum((records["object_ratio"].to_numpy() * BINS).astype(int), BINS - 1)
    df = records.assign(bin=b)
    out = df.groupby(["cell", "bin"]).agg(mean_iou=("iou", "mean"), count=("iou", "size")).reset_index()
    out["left"] = out["bin"] / BINS
    return out


def plot_iou_vs_size(records_by_dataset: Dict[str, pd.DataFrame], cells: List[str], title: str) -> plt.Figure:
    """One panel per dataset: mean IoU per size bin for each cell (lines), image counts (grey bars)."""
    n = len(records_by_dataset)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (dataset, records) in zip(axes[0], records_by_dataset.items()):
        bins = size_bins(records[records.cell.isin(cells)])
        counts = bins[bins.cell == cells[0]].set_index("bin")["count"] if len(bins) else pd.Series(dtype=int)
        twin = ax.twinx()
        twin.bar(counts.index / BINS + 0.5 / BINS, counts.values, width=0.9 / BINS, color="0.85", zorder=0)
        twin.set_ylabel("images per bin", color="0.45")
        twin.tick_params(axis="y", colors="0.45")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        for cell in cells:
            c = bins[bins.cell == cell]
            ax.plot(c["left"] + 0.5 / BINS, c["mean_iou"], marker="o", ms=3, label=cell.split("/")[-1])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("object size (GT pixels / image pixels)")
        ax.set_ylabel("mean IoU")
        ax.set_title(DATASET_LABELS.get(dataset, dataset))
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
