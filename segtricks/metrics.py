"""Saliency and detection metrics, streamed image by image, each protocol under its own name.

``SaliencyEvaluator.update(pred, gt)`` takes one soft prediction (H, W) in [0, 1] already at the
ground truth's original size, on CPU or CUDA; memory does not grow with the dataset except for the
per-image records (one row per image). Threshold sweeps are histograms (one ``bincount`` per image).

Protocol names (β² = 0.3 everywhere; thresholds on the soft map):

| name | definition |
|---|---|
| ``acc`` | pixel accuracy of pred > 0.5, mean over images |
| ``iou`` | IoU of pred > 0.5 (1 when both masks are empty), mean over images |
| ``max_fbeta`` | **the paper's** (TokenCut/MOVE): pred > k/255, k = 0…254; per-image F curve averaged over images; its max |
| ``max_fbeta_per_image`` | SelfMask/FOUND style: each image's max F over pred ≥ t/255, t = 0…255 (≥ 0, "all foreground", included), averaged |
| ``max_fbeta_pr_curve`` | classic SOD toolbox: pred ≥ t/255, t = 0…255; image-averaged precision and recall curves; F from them; its max |
| ``mean_fbeta_adaptive`` | F of pred ≥ min(2·mean(pred), 1) per image, averaged |
| ``mae`` | mean |pred − gt| per image, averaged |
| ``s_measure`` | structure measure (Fan et al. 2017), α = 0.5, as pysodmetrics defines it |
| ``max_e_measure`` / ``mean_e_measure`` | enhanced-alignment measure (Fan et al. 2018) over pred ≥ t/255, image-averaged curve, max / mean |
| ``corloc`` | % of images whose largest connected component's box has IoU ≥ 0.5 with any GT box |
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

BETA2 = 0.3
EPS = float(np.spacing(1))  # MATLAB's eps, as the S/E-measure reference code uses
PROTOCOLS = ("acc", "iou", "max_fbeta", "max_fbeta_per_image", "max_fbeta_pr_curve",
             "mean_fbeta_adaptive", "mae", "s_measure", "max_e_measure", "mean_e_measure")


def fbeta(precision: torch.Tensor, recall: torch.Tensor) -> torch.Tensor:
    """(1+β²)PR / (β²P + R), 0 where P = R = 0."""
    num = (1 + BETA2) * precision * recall
    den = BETA2 * precision + recall
    return torch.where(num > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _counts_above(pred: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor,
                  inclusive: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(TP, predicted-positive) counts per threshold for pred > t (or ≥ t), by one histogram."""
    n = thresholds.numel()
    # bucket b = number of thresholds below pred (strictly, or ≤ pred when inclusive)
    bucket = torch.bucketize(pred.reshape(-1), thresholds, right=inclusive)
    hist = torch.bincount(bucket + gt.reshape(-1).long() * (n + 1), minlength=2 * (n + 1))
    hist = hist.reshape(2, n + 1).double().cpu()
    # count of pixels with bucket > k, i.e. above threshold k: reverse cumulative sum from bucket k+1
    above = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    return above[1], above[0] + above[1]


def s_measure(pred: torch.Tensor, gt: torch.Tensor, alpha: float = 0.5) -> float:
    """Structure measure of one map (float64 (H, W) in [0, 1]) against a boolean mask."""
    y = gt.double().mean().item()
    if y == 0:
        return 1 - pred.mean().item()
    if y == 1:
        return pred.mean().item()

    def s_object(x: torch.Tensor) -> float:
        mean = x.mean().item()
        std = x.std().item() if x.numel() > 1 else 0.0
        return 2 * mean / (mean ** 2 + 1 + std + EPS)

    obj = s_object(pred[gt]) * y + s_object((1 - pred)[~gt]) * (1 - y)
    h, w = gt.shape
    cy, cx = (int(v) + 1 for v in torch.nonzero(gt).double().mean(0).round().tolist())
    g = gt.double()
    region = 0.0
    for ys, xs in ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)),
                   (slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w))):
        p, q = pred[ys, xs], g[ys, xs]
        n = p.numel()
        if n == 0:
            continue
        mx, my = p.mean(), q.mean()
        sx = ((p - mx) ** 2).sum() / (n - 1 + EPS)
        sy = ((q - my) ** 2).sum() / (n - 1 + EPS)
        sxy = ((p - mx) * (q - my)).sum() / (n - 1 + EPS)
        a = (4 * mx * my * sxy).item()
        b = ((mx ** 2 + my ** 2) * (sx + sy)).item()
        score = a / (b + EPS) if a != 0 else (1.0 if b == 0 else 0.0)
        region += score * n / (h * w)
    return max(0.0, alpha * obj + (1 - alpha) * region)


def e_measure_curve(tp: torch.Tensor, pos: torch.Tensor, n_gt: float, size: float) -> torch.Tensor:
    """E-measure per threshold from (TP, predicted-positive) counts (pysodmetrics' closed form)."""
    if n_gt == 0:
        return (size - pos) / (size - 1 + EPS)
    if n_gt == size:
        return pos / (size - 1 + EPS)
    fp = pos - tp
    fn = n_gt - tp
    tn = size - pos - fn
    mean_pred, mean_gt = pos / size, n_gt / size
    total = torch.zeros_like(tp)
    for count, dp, dg in ((tp, 1 - mean_pred, 1 - mean_gt), (fp, 1 - mean_pred, -mean_gt),
                          (fn, -mean_pred, 1 - mean_gt), (tn, -mean_pred, -mean_gt)):
        align = 2 * dp * dg / (dp ** 2 + dg ** 2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total / (size - 1 + EPS)


class SaliencyEvaluator:
    """Streams per-image statistics; ``results()`` gives every protocol, ``records()`` the rows."""

    def __init__(self, with_structure: bool = True) -> None:
        self.with_structure = with_structure  # S/E-measures; off for quick validation passes
        self.n = 0
        self.paper_thresholds = torch.arange(255, dtype=torch.float64) / 255  # pred > k/255
        self.classic_thresholds = torch.arange(256, dtype=torch.float64) / 255  # pred ≥ t/255
        self.sum_f_curve = torch.zeros(255, dtype=torch.float64)
        self.sum_p_curve = torch.zeros(256, dtype=torch.float64)
        self.sum_r_curve = torch.zeros(256, dtype=torch.float64)
        self.sum_e_curve = torch.zeros(256, dtype=torch.float64)
        self.rows: List[Dict[str, object]] = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor, image_id: str = "", **extra: object) -> Dict[str, object]:
        """Add one image: pred (H, W) soft in [0, 1], gt (H, W) bool, same size, same device."""
        if pred.shape != gt.shape:
            raise ValueError(f"{image_id}: prediction {tuple(pred.shape)} and mask {tuple(gt.shape)} differ in "
                             f"size; resize the prediction to the mask's original size first")
        pred = pred.double().clamp(0, 1)
        gt = gt.bool()
        size = float(gt.numel())
        n_gt = gt.sum().item()
        binary = pred > 0.5
        inter = (binary & gt).sum().item()
        union = (binary | gt).sum().item()
        row: Dict[str, object] = {
            "image_id": image_id,
            "object_ratio": n_gt / size,
            "acc": (binary == gt).double().mean().item(),
            "iou": 1.0 if union == 0 else inter / union,
            "mae": (pred - gt.double()).abs().mean().item(),
        }
        dev = pred.device
        tp, pos = _counts_above(pred, gt, self.paper_thresholds.to(dev), inclusive=False)
        self.sum_f_curve += fbeta(tp / pos.clamp(min=1), tp / max(n_gt, 1))
        tp_c, pos_c = _counts_above(pred, gt, self.classic_thresholds.to(dev), inclusive=True)
        precision, recall = tp_c / pos_c.clamp(min=1), tp_c / max(n_gt, 1)
        self.sum_p_curve += precision
        self.sum_r_curve += recall
        row["max_fbeta_image"] = fbeta(precision, recall).max().item()  # this image's own best F
        adaptive = pred >= min(2 * pred.mean().item(), 1.0)
        a_tp, a_pos = (adaptive & gt).sum().item(), adaptive.sum().item()
        row["fbeta_adaptive"] = fbeta(torch.tensor(a_tp / max(a_pos, 1)), torch.tensor(a_tp / max(n_gt, 1))).item()
        if self.with_structure:
            row["s_measure"] = s_measure(pred, gt)
            self.sum_e_curve += e_measure_curve(tp_c, pos_c, n_gt, size)
        row.update(extra)
        self.rows.append(row)
        self.n += 1
        return row

    def results(self) -> Dict[str, float]:
        if self.n == 0:
            raise ValueError("no image was evaluated")
        df = self.records()
        p, r = self.sum_p_curve / self.n, self.sum_r_curve / self.n
        out = {
            "acc": df["acc"].mean(), "iou": df["iou"].mean(),
            "max_fbeta": (self.sum_f_curve / self.n).max().item(),
            "max_fbeta_per_image": df["max_fbeta_image"].mean(),
            "max_fbeta_pr_curve": fbeta(p, r).max().item(),
            "mean_fbeta_adaptive": df["fbeta_adaptive"].mean(),
            "mae": df["mae"].mean(),
        }
        if self.with_structure:
            e = self.sum_e_curve / self.n
            out.update(s_measure=df["s_measure"].mean(), max_e_measure=e.max().item(), mean_e_measure=e.mean().item())
        if "corloc_hit" in df:
            out["corloc"] = 100.0 * df["corloc_hit"].mean()
        out["n_images"] = self.n
        return {k: float(v) for k, v in out.items()}

    def records(self) -> pd.DataFrame:
        """One row per image: id, object ratio, IoU, Acc, MAE, F values, … (for object-size analysis)."""
        return pd.DataFrame(self.rows)


def largest_component_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the largest 8-connected component; None if empty."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == (np.argmax(sizes) + 1))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def corloc_hit(mask: np.ndarray, gt_boxes: Sequence[Sequence[float]]) -> Tuple[bool, Optional[Tuple[int, int, int, int]]]:
    """Is the largest component's box a hit (IoU ≥ 0.5 with any GT box)? Also returns the box."""
    box = largest_component_box(mask)
    hit = box is not None and any(box_iou(box, g) >= 0.5 for g in gt_boxes)
    return hit, box
