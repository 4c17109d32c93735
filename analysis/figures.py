"""IoU against object size (paper Fig. 6–8) and qualitative examples, from per-image records.

Figures are ``matplotlib.figure.Figure`` objects, built without pyplot: no backend is chosen and
nothing needs closing (``Figure.savefig`` picks the renderer from the file's suffix).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.contrasts import ALPHA
from analysis.paper import DATASET_LABELS
from analysis.tables import short_delta
from segtricks.config.vocabulary import CELL_SEPARATOR, METRICS

BINS = 20  # equal bins of the object ratio over [0, 1]
MIN_IMAGES = 5  # a bin with fewer images is drawn hollow and faded, without an interval
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]  # 4 and 7 are coprime: the first 28 cells differ in both
DODGE = 0.12 / BINS  # cells' error bars side by side within a bin (8 cells still fit in one)
TIE = 0.005  # an IoU difference smaller than this prints as ±0.00: neither a gain nor a loss


def last_entry(cell: str) -> str:
    """A cell's last axis entry (``dino_s8/crop+gf`` → ``crop+gf``): its label within its group."""
    return cell.split(CELL_SEPARATOR)[-1]


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (fixed seed: figures are reproducible)."""
    values = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    lo, hi = np.percentile(values[picks].mean(axis=1), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def size_bins(records: pd.DataFrame) -> pd.DataFrame:
    """Per cell and bin: mean IoU, image count and the mean's 95% bootstrap interval (``ci_low``,
    ``ci_high``). Bin i holds ratios in [i/20, (i+1)/20) (1.0 in the last)."""
    b = np.minimum((records["object_ratio"].to_numpy() * BINS).astype(int), BINS - 1)
    groups = records.assign(bin=b).groupby(["cell", "bin"])["iou"]
    out = groups.agg(mean_iou="mean", count="size").reset_index()
    ci = np.array([bootstrap_ci(v.to_numpy()) for _, v in groups]).reshape(-1, 2)  # same (sorted) group order
    out["ci_low"], out["ci_high"] = ci[:, 0], ci[:, 1]
    out["left"] = out["bin"] / BINS
    return out


def line_style(i: int) -> dict:
    """Colour, line style and marker of the i-th cell: the trick lines lie close together, so each
    differs from the others in all three (readable in grey print too)."""
    return {"color": f"C{i % 10}", "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}


def draw_cell(ax: Axes, bins: pd.DataFrame, style: dict, label: str, dodge: float) -> None:
    """One cell's mean IoU per bin, shifted by ``dodge`` so that the cells' error bars stand side by
    side. Bins of at least MIN_IMAGES images: filled markers on a full line, with the 95% interval;
    sparser bins: hollow faded markers on a faint line, so that one image at IoU 0 does not weigh
    like a bin of a hundred."""
    x = bins["left"] + 0.5 / BINS + dodge
    y = bins["mean_iou"]
    dense = bins["count"] >= MIN_IMAGES
    ax.plot(x, y, color=style["color"], linestyle=style["linestyle"], lw=1, alpha=0.3)
    ax.plot(x, y.where(dense), **style, lw=1.6, ms=4, label=label)
    ax.plot(x[~dense], y[~dense], color=style["color"], marker=style["marker"], linestyle="none", ms=4, mfc="none",
            alpha=0.5)
    ax.errorbar(x[dense], y[dense], yerr=[y[dense] - bins["ci_low"][dense], bins["ci_high"][dense] - y[dense]],
                fmt="none", ecolor=style["color"], elinewidth=1, alpha=0.7)


def draw_counts(ax: Axes, bins: pd.DataFrame) -> None:
    """Images per bin (the most of any cell: cells share their images) as grey bars on a second axis
    behind the lines."""
    counts = bins.groupby("bin")["count"].max()
    twin = ax.twinx()
    twin.bar(counts.index / BINS + 0.5 / BINS, counts.values, width=0.9 / BINS, color="0.88", zorder=0)
    twin.set_ylabel("images per bin", color="0.45")
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    twin.tick_params(axis="y", colors="0.45")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)


def legend_rows(*rows: List) -> Tuple[List, int]:
    """Handles and a column count that show each list of handles on its own legend row (matplotlib
    fills a legend column by column, so the rows are interleaved and padded with blank entries)."""
    width = max(map(len, rows))
    blank = Line2D([], [], linestyle="none", label="")
    padded = [row + [blank] * (width - len(row)) for row in rows]
    return [handle for column in zip(*padded) for handle in column], width


def plot_iou_vs_size(records_by_dataset: Dict[str, pd.DataFrame], cells: List[str], title: str) -> Figure:
    """One panel per dataset: mean IoU per size bin for each cell (lines with 95% bootstrap intervals),
    image counts (grey bars); one legend below the panels, the cells on its first row."""
    n = len(records_by_dataset)
    fig = Figure(figsize=(max(7.0, 5.5 * n), 5), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    dodges = (np.arange(len(cells)) - (len(cells) - 1) / 2) * DODGE
    for ax, (dataset, records) in zip(axes[0], records_by_dataset.items()):
        bins = size_bins(records[records.cell.isin(cells)])
        draw_counts(ax, bins)
        for i, cell in enumerate(cells):
            draw_cell(ax, bins[bins.cell == cell], line_style(i), last_entry(cell), dodges[i])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("object size (GT pixels / image pixels)")
        ax.set_ylabel("mean IoU")
        ax.set_title(DATASET_LABELS.get(dataset, dataset))
        ax.grid(alpha=0.3)
    handles, ncol = legend_rows([Line2D([], [], **line_style(i), label=last_entry(cell))
                                 for i, cell in enumerate(cells)], [
        Line2D([], [], color="0.3", marker="|", ms=10, linestyle="none", label="95% bootstrap CI of the mean"),
        Line2D([], [], color="0.3", marker="o", mfc="none", linestyle="none", alpha=0.6,
               label=f"< {MIN_IMAGES} images: hollow, no CI"),
        Patch(color="0.88", label="images per bin (right axis)")])
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title)
    return fig


def pick_examples(records: pd.DataFrame, baseline: str, full: str, ids: List[str], n: int = 2) -> List[tuple]:
    """The selection rule of the qualitative figures: among ``ids`` (the images every run kept), the
    ``n`` with the largest IoU gain of ``full`` over ``baseline``, then the ``n`` with the largest loss.
    A difference under TIE is a tie, never shown as a gain or loss; only when no image differs are
    ``n`` ties shown, labelled "tie"."""
    iou = records[records.image_id.astype(str).isin(ids)].pivot_table(index="image_id", columns="cell", values="iou")
    if baseline not in iou or full not in iou:
        return []
    diff = (iou[full] - iou[baseline]).dropna()
    gains = diff[diff >= TIE].sort_values(ascending=False)[:n]
    losses = diff[diff <= -TIE].sort_values()[:n]
    chosen = [(str(i), f"gain {d:+.2f}") for i, d in gains.items()] + \
             [(str(i), f"loss {d:+.2f}") for i, d in losses.items()]
    return chosen or [(str(i), "tie") for i in diff.index[:n]]


def plot_qualitative(samples: Dict[str, Dict[str, tuple]], records: pd.DataFrame, cells: List[str],
                     chosen: List[tuple], title: str) -> Figure:
    """Rows: chosen images; columns: image, ground truth, then each cell's soft prediction with its
    IoU, all masks on one 0–1 grey scale explained by a colour bar."""
    cols = 2 + len(cells)
    # rows as tall as the images drawn 2.3 in wide (plus their titles), not square cells with gaps
    aspect = max(samples[cells[0]][i][0].shape[0] / samples[cells[0]][i][0].shape[1] for i, _ in chosen)
    fig = Figure(figsize=(2.3 * cols + 1, len(chosen) * (2.3 * aspect + 0.5) + 0.4), layout="constrained")
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    iou = records.assign(image_id=records.image_id.astype(str)).set_index(["cell", "image_id"])["iou"]
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1}
    for row, (image_id, label) in enumerate(chosen):
        image, gt, _ = samples[cells[0]][image_id]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"{image_id}\n{label}", fontsize=8)
        axes[row, 1].imshow(gt, **grey)
        axes[row, 1].set_title("ground truth", fontsize=8)
        for col, cell in enumerate(cells, start=2):
            mask = axes[row, col].imshow(samples[cell][image_id][2] / 255, **grey)  # stored as uint8 0–255
            axes[row, col].set_title(f"{last_entry(cell)} (IoU {iou.get((cell, image_id), float('nan')):.2f})",
                                     fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    bar = fig.colorbar(mask, ax=axes, shrink=min(0.8, 1.6 / len(chosen)), aspect=20)  # about two rows tall
    bar.set_label("predicted foreground score (ground truth: 0 or 1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def contrast_labels(table: pd.DataFrame) -> Tuple[Dict[str, str], str]:
    """Short labels of a contrasts table's contrasts (``crop vs baseline``, ``dino_s8: crop vs baseline``
    when the grid has several groups) and the group they all share ("" if none)."""
    pairs = dict(zip(table.contrast, zip(table.trick, table.baseline)))
    groups = {}
    for name, (trick, baseline) in pairs.items():
        t, b = trick.split(CELL_SEPARATOR), baseline.split(CELL_SEPARATOR)
        groups[name] = t[0] if len(t) > 1 and t[:-1] == b[:-1] else None
    shared = set(groups.values())
    common = next(iter(shared)) if len(shared) == 1 and None not in shared else ""
    labels = {}
    for name, (trick, baseline) in pairs.items():
        if groups[name] is None:
            labels[name] = name
        else:
            short = f"{last_entry(trick)} vs {last_entry(baseline)}"
            labels[name] = short if common else f"{groups[name]}: {short}"
    return labels, common


def _delta_text(metric: str, row) -> str:
    """``−.022 [−.040, −.010]  p_holm 0.0056``: the row's numbers beside its interval."""
    low, delta, high = (short_delta(metric, v).replace("-", "−") for v in (row.ci_low, row.delta, row.ci_high))
    return f"{delta} [{low}, {high}]  p_holm {row.p_holm:.2g}"


def plot_contrasts(table: pd.DataFrame, title: str) -> Figure:
    """A forest plot of a contrasts table (``analysis.contrasts``): Δ and its 95% interval over images
    per contrast, one panel per dataset (a row of panels per metric), a zero line, the numbers beside
    each interval. Filled markers: significant after Holm's correction, blue when the trick is better,
    red when it is worse (for MAE, lower is better); hollow grey: not significant."""
    datasets, metrics = list(dict.fromkeys(table.dataset)), list(dict.fromkeys(table.metric))
    contrasts = list(dict.fromkeys(table.contrast))
    labels, common = contrast_labels(table)

    def group(name: str) -> str:
        return labels[name].split(": ")[0] if ": " in labels[name] else ""
    fig = Figure(figsize=(2.0 + 5.2 * len(datasets), 1.0 + len(metrics) * (0.42 * len(contrasts) + 0.95)),
                 layout="constrained")
    axes = fig.subplots(len(metrics), len(datasets), squeeze=False, sharey=True)
    for r, metric in enumerate(metrics):
        for c, dataset in enumerate(datasets):
            ax = axes[r, c]
            rows = table[(table.dataset == dataset) & (table.metric == metric)].set_index("contrast")
            ends = [0.0]
            for y, name in enumerate(contrasts):
                if name not in rows.index:
                    continue
                row = rows.loc[name]
                better = (row.delta < 0) == METRICS[metric].lower_is_better
                colour = ("C0" if better else "C3") if row.p_holm < ALPHA else "0.45"
                ax.errorbar(row.delta, y, xerr=[[row.delta - row.ci_low], [row.ci_high - row.delta]], fmt="o",
                            color=colour, mfc=colour if row.p_holm < ALPHA else "white", capsize=3, ms=6)
                ax.annotate(_delta_text(metric, row), (row.delta, y), xytext=(0, 7), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, color=colour)
                ends += [row.ci_low, row.ci_high]
            low, high = np.nanmin(ends), np.nanmax(ends)
            pad = 0.12 * (high - low or 1.0)
            ax.set_xlim(low - pad, high + pad)  # the zero line inside the panel, never on its edge
            ax.axvline(0, color="0.5", lw=0.8, ls="--")
            for y in range(1, len(contrasts)):  # a faint line between groups (backbones)
                if group(contrasts[y]) != group(contrasts[y - 1]):
                    ax.axhline(y - 0.5, color="0.85", lw=0.8)
            ax.set_yticks(range(len(contrasts)), [labels[n] for n in contrasts], fontsize=8)
            ax.set_ylim(len(contrasts) - 0.4, -0.75)  # room above the first interval for its numbers
            better = "lower is better" if METRICS[metric].lower_is_better else "higher is better"
            label = METRICS[metric].label.replace("(%)", "(% points)")
            ax.set_xlabel(f"Δ {label}, trick − baseline ({better})", fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", alpha=0.3)
            if r == 0:
                ax.set_title(DATASET_LABELS.get(dataset, dataset), fontsize=10)
    handles = [Line2D([], [], marker="o", color="C0", ls="", label="trick better (Holm-adjusted p < 0.05)"),
               Line2D([], [], marker="o", color="C3", ls="", label="trick worse (Holm-adjusted p < 0.05)"),
               Line2D([], [], marker="o", color="0.45", mfc="white", ls="", label="not significant")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    seeds = sorted(set(table.n_seeds))
    fig.suptitle(f"{title}{f' ({common})' if common else ''}\n95% BCa intervals over images, paired sign-flip test, "
                 f"Holm across the {len(table)} contrasts; seeds: {', '.join(map(str, seeds))}; dashed: no difference",
                 fontsize=9)
    return fig
