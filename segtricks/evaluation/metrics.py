"""Saliency and detection metrics, streamed image by image, each protocol under its own name.

``SaliencyEvaluator.update(pred, gt)`` takes one soft prediction (H, W) in [0, 1] already at the
ground truth's original size, a numpy array or a torch tensor on CPU or CUDA (scored on the CPU in
numpy, arrays reused from image to image; this module imports no torch); memory does not grow with
the dataset except for the per-image records (one row per image). Every threshold sweep comes from
a 512-bin histogram per image; S-measure, MAE and the object terms come from sums over the four
centroid quadrants.

Two families of protocols see the map differently (docs/evaluation.md#our-protocol):
- **paper** protocols (acc, iou, max_fbeta, max_fbeta_per_image) score the soft mask as predicted,
  quantised to q = round(255·pred) as saving it as a PNG would (exact for 8-bit maps);
- **SOD-toolbox** protocols (max_fbeta_pr_curve, mean_fbeta_adaptive, mae, s_measure, the
  e-measures) first rescale each map by its own min and max (when it is not constant), then
  threshold it at q = floor(255·rescaled) ≥ t, as the public toolboxes and pysodmetrics do. A map
  that does not span 0–255 scores as in the published figures only with that rescaling.

Protocol names (β² = 0.3 everywhere):

| name | definition |
|---|---|
| ``acc`` | pixel accuracy of q ≥ 128 (pred ≥ 0.5), mean over images |
| ``iou`` | IoU of q ≥ 128 (1 when both masks are empty), mean over images |
| ``max_fbeta`` | **the paper's** (TokenCut/MOVE): pred > k/255, k = 0…254; per-image F curve averaged over images; its max |
| ``max_fbeta_per_image`` | SelfMask/FOUND style: each image's max F over pred ≥ t/255, t = 0…255 (≥ 0, "all foreground", included), averaged |
| ``max_fbeta_pr_curve`` | toolbox (rescaled): r ≥ t/255, t = 0…255; image-averaged precision and recall curves; F from them; its max |
| ``mean_fbeta_adaptive`` | toolbox (rescaled): F of r ≥ min(2·mean(r), 1) per image, averaged |
| ``mae`` | toolbox (rescaled): mean |r − gt| per image, averaged |
| ``s_measure`` | toolbox (rescaled): structure measure (Fan et al. 2017), α = 0.5, as pysodmetrics defines it |
| ``max_e_measure`` / ``mean_e_measure`` | toolbox (rescaled): enhanced-alignment measure (Fan et al. 2018) over r ≥ t/255, image-averaged curve, max / mean |
| ``corloc`` | % of images whose largest connected component's box has IoU ≥ 0.5 with any GT box |
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from segtricks.errors import BadInput

BETA2 = 0.3


class NothingScoredError(BadInput, ValueError):
    """Every image of an evaluation was skipped (or there were none): there is no score to report."""

EPS = float(np.spacing(1))  # MATLAB's eps, as the S/E-measure reference code uses


class Scratch:
    """Per-image arrays reused from image to image. A fresh megabyte-sized numpy array is a fresh
    mmap whose pages fault in on first touch, which cost more than the arithmetic done on them."""

    def __init__(self) -> None:
        self._arrays: Dict[Tuple[str, np.dtype], np.ndarray] = {}

    def get(self, name: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array ``name`` of this shape and dtype, grown (never shrunk) as needed."""
        key, n = (name, np.dtype(dtype)), math.prod(shape)
        flat = self._arrays.get(key)
        if flat is None or flat.size < n:
            flat = self._arrays[key] = np.empty(n, dtype)
        return flat[:n].reshape(shape)


def as_array(x) -> np.ndarray:
    """A numpy array as it is; a torch tensor (any device) copied to a CPU numpy array."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def prepared_maps(p: np.ndarray, scratch: Scratch) -> Tuple[np.ndarray, np.ndarray]:
    """(p, r): the prediction map clipped to [0, 1], and r, p rescaled by its own min and max to
    [0, 1] (p itself when constant) as pysodmetrics' and the SOD toolboxes' data preparation does.
    float64 stays float64, so the toolbox quantisation equals pysodmetrics' on maps read from PNGs;
    anything else is float32."""
    p = p if p.dtype == np.float64 else p.astype(np.float32, copy=False)
    lo, hi = p.min(), p.max()
    if lo < 0 or hi > 1:
        p, lo, hi = np.clip(p, 0, 1), np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    if hi == lo:
        return p, p
    r = np.subtract(p, lo, out=scratch.get("r", p.shape, p.dtype))
    r /= hi - lo
    return p, r


def fbeta(precision, recall):
    """(1+β²)PR / (β²P + R), 0 where P = R = 0; numpy arrays or scalars."""
    num = (1 + BETA2) * precision * recall
    den = BETA2 * precision + recall
    return np.where(num > 0, num / np.where(den > 0, den, 1.0), 0.0)


def level_histograms(p: np.ndarray, r: np.ndarray, g: np.ndarray, scratch: Scratch) -> np.ndarray:
    """(2, 512) counts of level + 256·gt: row 0 the paper's levels round(255·p), row 1 the toolbox's
    floor(255·r) (pysodmetrics' uint8 cast; r ≤ 1, so no clamp). g is the mask as 0/1 floats.

    One bincount of the joint index paper + 256·gt + 512·toolbox, then its two marginals: bincount
    costs a few ns a pixel however few its bins, more than the extra index arithmetic."""
    index = scratch.get("index", g.shape, np.intp)
    paper, toolbox = scratch.get("paper", g.shape, p.dtype), scratch.get("toolbox", g.shape, p.dtype)
    np.rint(np.multiply(p, 255, out=paper), out=paper)
    paper += np.multiply(g, 256, out=toolbox)
    np.floor(np.multiply(r, 255, out=toolbox), out=toolbox)
    toolbox *= 512
    np.add(paper, toolbox, out=index, casting="unsafe")  # integers already: the cast is exact
    joint = np.bincount(index.ravel(), minlength=512 * 256).reshape(256, 2, 256)  # (toolbox, gt, paper)
    return np.stack([joint.sum(0).ravel(), joint.sum(2).T.ravel()])


def e_measure_curves(tp: np.ndarray, pos: np.ndarray, n_gt: np.ndarray, size: np.ndarray) -> np.ndarray:
    """E-measure per image and threshold, (B, T), from (TP, predicted-positive) counts (B, T) and
    per-image GT counts and sizes (B, 1): pysodmetrics' closed form, vectorised."""
    fp, fn = pos - tp, n_gt - tp
    tn = size - pos - fn
    mean_pred, mean_gt = pos / size, n_gt / size
    total = np.zeros_like(tp)
    for count, dp, dg in ((tp, 1 - mean_pred, 1 - mean_gt), (fp, 1 - mean_pred, -mean_gt),
                          (fn, -mean_pred, 1 - mean_gt), (tn, -mean_pred, -mean_gt)):
        align = 2 * dp * dg / (dp ** 2 + dg ** 2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    # an image with no object (or only object) scores the predicted background (foreground) share
    total = np.where(n_gt == 0, size - pos, np.where(n_gt == size, pos, total))
    # w·h − 1, as Fan et al.'s Matlab code and pysodmetrics divide: a perfect map scores w·h/(w·h − 1), just above 1
    return total / (size - 1 + EPS)


def _s_object(n: float, s1: float, s2: float) -> float:
    """Fan et al.'s object score from count, sum and sum of squares (unbiased std)."""
    if n == 0:
        return 0.0
    mean = s1 / n
    std = max(s2 - s1 * s1 / n, 0.0) / (n - 1) if n > 1 else 0.0
    return 2 * mean / (mean ** 2 + 1 + std ** 0.5 + EPS)


def _ssim(n: float, sp: float, spp: float, sg: float, spg: float) -> float:
    """The S-measure's region SSIM from sums over one quadrant (gt binary, so Σg² = Σg)."""
    if n == 0:
        return 0.0
    mx, my = sp / n, sg / n
    sx = (spp - n * mx * mx) / (n - 1 + EPS)
    sy = (sg - n * my * my) / (n - 1 + EPS)
    sxy = (spg - n * mx * my) / (n - 1 + EPS)
    a = 4 * mx * my * sxy
    b = (mx * mx + my * my) * (sx + sy)
    return a / (b + EPS) if a != 0 else (1.0 if b == 0 else 0.0)


def gt_centre(g: np.ndarray) -> Tuple[int, int]:
    """The S-measure's split point: the centroid of the mask g (0/1 floats) as numpy's
    argwhere(gt).mean(0).round() (half to even; the integer sums are exact, so the mean is too), plus
    one as in MATLAB; the image centre when there is no object."""
    h, w = g.shape
    rows = g.sum(1, dtype=np.float64)
    n = rows.sum()
    if n == 0:
        return round(h / 2) + 1, round(w / 2) + 1
    cy = rows @ np.arange(h) / n
    cx = g.sum(0, dtype=np.float64) @ np.arange(w) / n
    return int(np.round(cy)) + 1, int(np.round(cx)) + 1


def structure_sums(r: np.ndarray, g: np.ndarray, gt: np.ndarray, centre: Tuple[int, int],
                   scratch: Scratch) -> List[List[float]]:
    """Sums of (r, r², g, r·g, r²·g) over the four quadrants around ``centre`` (row-major), (5, 4);
    g is the mask gt as 0/1 floats.

    Per-row sums of each column half, then split at the centre row: two passes over each map and no
    stacked 5-map array; r²·g = (r·g)² as g is binary, and the squares are row dot products."""
    cy, cx = centre
    rg = np.multiply(r, g, out=scratch.get("rg", r.shape, r.dtype))
    quads = np.empty((5, 2, 2))
    for j, cols in enumerate((slice(None, cx), slice(cx, None))):
        a, b = r[:, cols], rg[:, cols]
        per_row = np.stack([a.sum(1), np.einsum("ij,ij->i", a, a), b.sum(1), np.einsum("ij,ij->i", b, b)])
        per_row = per_row.astype(np.float64)  # (4, H): float32 row sums, float64 beyond
        quads[[0, 1, 3, 4], 0, j], quads[[0, 1, 3, 4], 1, j] = per_row[:, :cy].sum(1), per_row[:, cy:].sum(1)
        quads[2, :, j] = np.count_nonzero(gt[:cy, cols]), np.count_nonzero(gt[cy:, cols])
    return quads.reshape(5, 4).tolist()


def s_measure_from_sums(q: List[List[float]], centre: Tuple[int, int], h: int, w: int,
                        alpha: float = 0.5) -> float:
    """Structure measure (Fan et al. 2017, α = 0.5) as pysodmetrics computes it."""
    sp, spp, sg, spg, sppg = (sum(v) for v in q)
    size = float(h * w)
    y = sg / size
    if y == 0:
        return 1 - sp / size
    if y == 1:
        return sp / size
    n_bg = size - sg
    sp_bg, spp_bg = sp - spg, spp - sppg
    obj = (_s_object(sg, spg, sppg) * y
           + _s_object(n_bg, n_bg - sp_bg, n_bg - 2 * sp_bg + spp_bg) * (1 - y))  # on 1 − p over the background
    cy, cx = centre
    areas = (cy * cx, cy * (w - cx), (h - cy) * cx, (h - cy) * (w - cx))
    region = sum(_ssim(areas[i], q[0][i], q[1][i], q[2][i], q[3][i]) * areas[i] / size for i in range(4))
    return max(0.0, alpha * obj + (1 - alpha) * region)


class SaliencyEvaluator:
    """Streams per-image statistics; ``results()`` gives every protocol, ``records()`` the rows.

    ``self.n`` counts images with a mask (saliency protocols); CorLoc counts images with boxes.
    """

    def __init__(self, with_structure: bool = True) -> None:
        self.with_structure = with_structure  # S/E-measures; off for quick validation passes
        self.n = 0
        self.sum_f_curve = np.zeros(255)
        self.sum_p_curve = np.zeros(256)
        self.sum_r_curve = np.zeros(256)
        self.sum_e_curve = np.zeros(256)
        self.rows: List[Dict[str, object]] = []
        self.skipped: List[Tuple[str, str]] = []  # (id, reason) of images left out (on_error: skip)
        # (id, image (3,H,W), mask or None, prediction) tensors of the first images, kept by the caller for figures
        self.samples: List[Tuple[str, object, Optional[object], object]] = []
        self.flush_every = 64  # images whose histograms wait for one batched curve computation
        self._pending_hists: List[np.ndarray] = []
        self._pending_rows: List[Dict[str, object]] = []
        self._scratch = Scratch()
        # each image's F curve under the paper's max_fbeta (float32, 1 KB an image): the evidence that
        # lets analysis recompute the dataset-level statistic on any resample of images
        self._curve_ids: List[str] = []
        self._f_curves: List[np.ndarray] = []

    def update(self, pred, gt=None, image_id: str = "", boxes: Optional[np.ndarray] = None,
               pred_box: Optional[Sequence[float]] = None, **extra: object) -> Dict[str, object]:
        """Add one image: pred (H, W) soft in [0, 1]; gt (H, W) bool at the same size and/or GT boxes
        (K, 4) for CorLoc; numpy arrays or torch tensors. ``pred_box``: a method's own box for CorLoc
        (LOST's seed component, Deep Spectral's largest 8-connected one); by default the box of the
        binary map's largest component. ``extra`` fields go into the image's record, which is returned;
        its threshold-curve fields (acc, iou, max_fbeta_image) are filled in batches, at the latest by
        ``records()`` or ``results()``."""
        p = as_array(pred)
        if not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"{image_id}: prediction must be a float map in [0, 1], got {pred.dtype}")
        row: Dict[str, object] = {"image_id": image_id}
        if gt is not None:
            if p.shape != tuple(gt.shape):
                raise ValueError(f"{image_id}: prediction {tuple(p.shape)} and mask {tuple(gt.shape)} differ "
                                 f"in size; resize the prediction to the mask's original size first")
            self._saliency(p, as_array(gt).astype(bool, copy=False), row)
        if boxes is not None:
            binary = p >= 0.5  # as q ≥ 128 of the saliency protocols
            if pred_box is None:
                hit, box = corloc_hit(binary, boxes)
            else:
                box = tuple(int(v) for v in pred_box)
                hit = any(box_iou(box, g) >= 0.5 for g in boxes)
            row.update(corloc_hit=hit, pred_box=box)
            if gt is None:  # object size from the union of the GT boxes
                cover = np.zeros(binary.shape, dtype=bool)
                for x0, y0, x1, y1 in boxes:
                    cover[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
                row["object_ratio"] = cover.mean()
        row.update(extra)
        self.rows.append(row)
        return row

    def _saliency(self, pred: np.ndarray, gt: np.ndarray, row: Dict[str, object]) -> None:
        # numpy on the CPU: per image the work is a few passes over one map, where torch's per-op
        # overhead and thread hand-offs (on a busy host) cost more than the arithmetic
        h, w = gt.shape
        size = float(h * w)
        p, r = prepared_maps(pred, self._scratch)
        g = self._scratch.get("g", gt.shape, p.dtype)
        g[...] = gt  # as floats: float sums and products are faster than on bool
        self._pending_hists.append(level_histograms(p, r, g, self._scratch))
        centre = gt_centre(g)
        quads = structure_sums(r, g, gt, centre, self._scratch)
        sr, sg, srg = float(r.sum(dtype=np.float64)), sum(quads[2]), sum(quads[3])
        # threshold as pysodmetrics' min(2·mean, 1): the whole-map sum, so the same float
        adaptive = np.greater_equal(r, min(2 * (sr / size), 1.0), out=self._scratch.get("adaptive", gt.shape, bool))
        a_pos = np.count_nonzero(adaptive)
        a_tp = np.count_nonzero(np.logical_and(adaptive, gt, out=adaptive))
        row.update(
            object_ratio=sg / size,
            mae=(sr - 2 * srg + sg) / size,  # |r − g| summed: r on the background, 1 − r on the object
            fbeta_adaptive=float(fbeta(a_tp / max(a_pos, 1), a_tp / max(sg, 1))),
        )
        if self.with_structure:
            row["s_measure"] = s_measure_from_sums(quads, centre, h, w)
        self._pending_rows.append(row)
        self.n += 1
        if len(self._pending_hists) == self.flush_every:
            self._flush()

    def _flush(self) -> None:
        """Threshold curves of the buffered images, as one (B, 256) computation per protocol family."""
        if not self._pending_hists:
            return
        hist = np.stack(self._pending_hists).reshape(-1, 2, 2, 256).astype(np.float64)
        at_least = np.cumsum(hist[..., ::-1], -1)[..., ::-1]  # [bg, fg] pixel counts with level ≥ t, t = 0…255
        tp, pos = at_least[:, 0, 1], at_least[:, 0, 0] + at_least[:, 0, 1]  # paper: the map as predicted
        n_gt, size = tp[:, :1], pos[:, :1]
        # paper protocol: pred > k/255 ⇔ q ≥ k + 1, k = 0…254
        f_curves = fbeta(tp[:, 1:] / np.maximum(pos[:, 1:], 1), tp[:, 1:] / np.maximum(n_gt, 1))
        self.sum_f_curve += f_curves.sum(0)
        self._f_curves.append(f_curves.astype(np.float32))
        self._curve_ids += [str(row["image_id"]) for row in self._pending_rows]
        best_f = fbeta(tp / np.maximum(pos, 1), tp / np.maximum(n_gt, 1)).max(-1)
        inter, pos_half = tp[:, 128], pos[:, 128]  # q ≥ 128 ⇔ pred ≥ 0.5
        union = pos_half + n_gt[:, 0] - inter
        acc = (size[:, 0] - pos_half - n_gt[:, 0] + 2 * inter) / size[:, 0]
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        tp, pos = at_least[:, 1, 1], at_least[:, 1, 0] + at_least[:, 1, 1]  # toolbox: the rescaled map
        self.sum_p_curve += (tp / np.maximum(pos, 1)).sum(0)
        self.sum_r_curve += (tp / np.maximum(n_gt, 1)).sum(0)
        if self.with_structure:
            self.sum_e_curve += e_measure_curves(tp, pos, n_gt, size).sum(0)
        for row, a, i, f in zip(self._pending_rows, acc.tolist(), iou.tolist(), best_f.tolist()):
            row.update(acc=a, iou=i, max_fbeta_image=f)
        self._pending_hists, self._pending_rows = [], []

    def results(self) -> Dict[str, float]:
        df = self.records()
        if df.empty:
            first = f" (the first: {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else ""
            raise NothingScoredError(f"no image was scored: {len(self.skipped)} were skipped{first}; check the "
                                     f"dataset's files, or its limit")
        out: Dict[str, float] = {"n_images": len(df), "skipped": len(self.skipped)}
        if "corloc_hit" in df:
            out["corloc"] = 100.0 * df["corloc_hit"].dropna().astype(float).mean()
        if self.n == 0:  # boxes only
            return {k: float(v) for k, v in out.items()}
        p, r = self.sum_p_curve / self.n, self.sum_r_curve / self.n
        out |= {
            "acc": df["acc"].mean(), "iou": df["iou"].mean(),
            "max_fbeta": (self.sum_f_curve / self.n).max(),
            "max_fbeta_per_image": df["max_fbeta_image"].mean(),
            "max_fbeta_pr_curve": fbeta(p, r).max(),
            "mean_fbeta_adaptive": df["fbeta_adaptive"].mean(),
            "mae": df["mae"].mean(),
        }
        if self.with_structure:
            e = self.sum_e_curve / self.n
            out.update(s_measure=df["s_measure"].mean(), max_e_measure=e.max(), mean_e_measure=e.mean())
        return {k: float(v) for k, v in out.items()}

    def f_curves(self) -> Tuple[List[str], np.ndarray]:
        """Each scored image's F curve of the paper's ``max_fbeta`` (ids, float32 (n, 255)): the mean of
        the rows is the image-averaged curve, whose max ``results()["max_fbeta"]`` is (to 1e-6)."""
        self._flush()
        return list(self._curve_ids), (np.concatenate(self._f_curves) if self._f_curves
                                       else np.zeros((0, 255), np.float32))

    def skip(self, image_id: str, reason: str) -> None:
        """Count an image that could not be scored (``results()["skipped"]``, ``self.skipped``)."""
        self.skipped.append((image_id, reason))

    def records(self) -> pd.DataFrame:
        """One row per image: id, object ratio, IoU, Acc, MAE, F values, … (for object-size analysis)."""
        self._flush()
        return pd.DataFrame(self.rows)


def largest_component_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the largest 8-connected component; None if empty."""
    from scipy import ndimage  # a fifth of the import time of scoring maps, which need no CorLoc

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
