"""Figures logged with runs: sample predictions beside their images and ground truth.

Built as ``matplotlib.figure.Figure`` objects, not through pyplot: no backend is chosen and no window
can open, and a figure is freed with its last reference (nothing to close).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from matplotlib.figure import Figure

if TYPE_CHECKING:  # the samples are tensors; drawing them needs no torch import
    import torch


def sample_predictions(samples: List[Tuple[str, torch.Tensor, Optional[torch.Tensor], torch.Tensor]], title: str) -> Figure:
    """A row per sample ``(id, image CHW, gt HW or None, prediction HW)``, tensors in [0, 1]: image,
    ground truth (if any), predicted soft mask with its IoU; masks share one 0–1 grey scale, explained
    by a colour bar."""
    cols = 3
    fig = Figure(figsize=(3 * cols + 0.8, 2.6 * len(samples)), layout="constrained")
    axes = fig.subplots(len(samples), cols, squeeze=False)
    for row, (i, im, gt, pr) in enumerate(samples):
        axes[row, 0].imshow(im.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[row, 0].set_title(i, fontsize=9)
        if gt is not None:
            axes[row, 1].imshow(gt.numpy(), cmap="gray", vmin=0, vmax=1)
            b = pr.numpy() >= 0.5
            g = gt.numpy().astype(bool)
            union = (b | g).sum()
            iou = (b & g).sum() / union if union else 1.0
            axes[row, 2].set_title(f"prediction (IoU {iou:.2f})", fontsize=9)
        else:
            axes[row, 2].set_title("prediction", fontsize=9)
        axes[row, 1].set_title("ground truth" if gt is not None else "no ground truth", fontsize=9)
        mask = axes[row, 2].imshow(pr.numpy(), cmap="gray", vmin=0, vmax=1)
        for ax in axes[row]:
            ax.axis("off")
    bar = fig.colorbar(mask, ax=axes, shrink=min(0.8, 1.6 / len(samples)))  # about two rows tall
    bar.set_label("predicted foreground score (ground truth: 0 or 1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return fig
