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


def read_samples(path: str) -> Dict[str, tuple]:
    """``samples/<dataset>.npz`` of a run → {image id: (image uint8 HWC, gt bool, prediction uint8)}."""
    with np.load(path) as z:
        return {str(i): (z[f"image_{k}"], z[f"gt_{k}"], z[f"pred_{k}"]) for k, i in enumerate(z["ids"])}


def pick_examples(records: pd.DataFrame, baseline: str, full: str, ids: List[str], n: int = 2) -> List[tuple]:
    """The selection rule of the qualitative figures: among ``ids`` (the images every run kept), the
    ``n`` with the largest IoU gain of ``full`` over ``baseline``, then the ``n`` with the largest loss."""
    iou = records[records.image_id.astype(str).isin(ids)].pivot_table(index="image_id", columns="cell", values="iou")
    if baseline not in iou or full not in iou:
        return []
    gain = (iou[full] - iou[baseline]).sort_values()
    best = list(gain.index[::-1][:n])
    worst = [i for i in gain.index[:n] if i not in best]
    return [(str(i), f"gain {gain[i]:+.2f}") for i in best] + [(str(i), f"loss {gain[i]:+.2f}") for i in worst]


def plot_qualitative(samples: Dict[str, Dict[str, tuple]], records: pd.DataFrame, cells: List[str],
                     chosen: List[tuple], title: str) -> plt.Figure:
    """Rows: chosen images; columns: image, ground truth, then each cell's prediction with its IoU."""
    cols = 2 + len(cells)
    fig, axes = plt.subplots(len(chosen), cols, figsize=(2.3 * cols, 2.3 * len(chosen) + 0.6), squeeze=False)
    iou = records.assign(image_id=records.image_id.astype(str)).set_index(["cell", "image_id"])["iou"]
    for row, (image_id, label) in enumerate(chosen):
        image, gt, _ = samples[cells[0]][image_id]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"{image_id}\n{label}", fontsize=8)
        axes[row, 1].imshow(gt, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title("ground truth", fontsize=8)
        for col, cell in enumerate(cells, start=2):
            axes[row, col].imshow(samples[cell][image_id][2], cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_title(f"{cell.split('/')[-1]} (IoU {iou.get((cell, image_id), float('nan')):.2f})",
                                     fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
