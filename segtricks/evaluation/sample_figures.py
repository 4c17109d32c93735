"""Figures logged with runs: sample predictions beside their images and ground truth."""
from __future__ import annotations

from typing import List

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def sample_predictions(ids: List[str], images: List[torch.Tensor], gts: List[torch.Tensor | None],
                       preds: List[torch.Tensor], title: str) -> plt.Figure:
    """A row per image: image, ground truth (if any), predicted soft mask with its IoU; masks share
    one 0–1 grey scale, explained by a colour bar."""
    cols = 3
    fig, axes = plt.subplots(len(ids), cols, figsize=(3 * cols + 0.8, 2.6 * len(ids)), squeeze=False,
                             layout="constrained")
    for row, (i, im, gt, pr) in enumerate(zip(ids, images, gts, preds)):
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
    bar = fig.colorbar(mask, ax=axes, shrink=min(0.8, 1.6 / len(ids)))  # about two rows tall
    bar.set_label("predicted foreground score (ground truth: 0 or 1)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)


