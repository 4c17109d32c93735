"""What an evaluation keeps in its run besides the metrics: each artifact's writer beside its reader.

    records/<key>.csv           one row per image (``SaliencyEvaluator.records()``): the size figures
    records/<key>.skipped.csv   image_id, reason of the images the evaluation could not read (if any)
    samples/<key>.npz           the first images (uint8 HWC, longer side <= SAMPLE_SIDE px), their ground
                                truth (bool) and prediction (uint8, 0-255): the qualitative figures
    predictions_<key>.png       a figure of the first four, to look at in ``mlflow ui``
    curves/<key>.npz            each image's F curve of the paper's max_fbeta (ids, float32 (n, 255), 1 KB
                                an image): the dataset-level statistic recomputed on any resample of images
                                (``analysis.contrasts``)

``key`` names a dataset under a protocol (``Protocol.dataset_key``: ``duts_te``, ``duts_te.reference``).
Runs logged before an artifact existed have none: the readers then return None or nothing. Torch-free
at import: only ``log_samples`` needs torch (the evaluator keeps its samples as tensors).
"""
from __future__ import annotations

import tempfile
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from segtricks.tracking.store import RunLog, Store

SAMPLE_SIDE = 192  # px: the longer side of a kept sample
FIGURE_SAMPLES = 4  # the first samples drawn in predictions_<key>.png


def records_path(key: str) -> str:
    return f"records/{key}.csv"


def skipped_path(key: str) -> str:
    return f"records/{key}.skipped.csv"


def samples_path(key: str) -> str:
    return f"samples/{key}.npz"


def figure_path(key: str) -> str:
    return f"predictions_{key}.png"


def curves_path(key: str) -> str:
    return f"curves/{key}.npz"


def describe_skipped(name: str, skipped: Sequence[tuple], shown: int = 10) -> str:
    """One line: how many images of dataset ``name`` were skipped, and the first ``shown`` ids."""
    ids = ", ".join(i for i, _ in skipped[:shown]) + (f", … ({len(skipped) - shown} more)" if len(skipped) > shown else "")
    return f"{name}: skipped {len(skipped)} image(s) that could not be read: {ids}"


def skipped_csv(skipped: Sequence[tuple]) -> str:
    """The skipped images as CSV (image_id, reason): the artifact that lists them."""
    return pd.DataFrame(list(skipped), columns=["image_id", "reason"]).to_csv(index=False)


def log_records(run: RunLog, key: str, records: pd.DataFrame, skipped: Sequence[tuple]) -> None:
    """The per-image records, and the skipped images when there are any."""
    run.log_text(records.to_csv(index=False), records_path(key))
    if skipped:
        run.log_text(skipped_csv(skipped), skipped_path(key))


def read_records(store: Store, run_id: str, key: str) -> Optional[pd.DataFrame]:
    """A run's per-image records, or None when it was not evaluated on ``key``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download(run_id, records_path(key), tmp)
        return None if path is None else pd.read_csv(path)


def log_curves(run: RunLog, key: str, ids: Sequence[str], curves: np.ndarray) -> None:
    """Each image's F curve (``SaliencyEvaluator.f_curves()``), float32; nothing when no image had a mask."""
    if not len(ids):
        return
    folder, name = curves_path(key).split("/")
    run.log_bytes(name, lambda path: np.savez_compressed(path, ids=np.array(ids), curves=curves.astype(np.float32)),
                  folder)


def read_curves(store: Store, run_id: str, key: str) -> Optional[pd.DataFrame]:
    """A run's per-image F curves on ``key`` (one row per image id, 255 columns), or None for a run that
    logged none (logged before curves were kept, or not evaluated on ``key``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download(run_id, curves_path(key), tmp)
        if path is None:
            return None
        with np.load(path) as z:
            return pd.DataFrame(z["curves"], index=pd.Index([str(i) for i in z["ids"]], name="image_id"))


def log_samples(run: RunLog, key: str, samples: list, title: str) -> None:
    """The evaluation's kept samples ``(id, image CHW, gt HW or None, prediction HW)``, tensors in
    [0, 1], resized so that the longer side is at most SAMPLE_SIDE, and a figure of the first few."""
    if not samples:
        return
    import torch.nn.functional as F  # the evaluator's tensors; importing this module stays torch-free

    from segtricks.evaluation.sample_figures import sample_predictions
    ids, images, gts, preds = [], [], [], []
    for image_id, image, gt, pred in samples:
        scale = min(1.0, SAMPLE_SIDE / max(image.shape[-2:]))
        size = [max(1, round(v * scale)) for v in image.shape[-2:]]
        ids.append(image_id)
        images.append((F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0] * 255)
                      .round().byte().permute(1, 2, 0).numpy())
        preds.append((F.interpolate(pred[None, None].float(), size=size, mode="bilinear")[0, 0] * 255)
                     .round().byte().numpy())
        gts.append(np.zeros(size, bool) if gt is None else
                   F.interpolate(gt[None, None].float(), size=size, mode="nearest")[0, 0].bool().numpy())
    folder, name = samples_path(key).split("/")
    run.log_bytes(name, lambda path: np.savez_compressed(
        path, ids=np.array(ids), **{f"image_{i}": a for i, a in enumerate(images)},
        **{f"gt_{i}": a for i, a in enumerate(gts)}, **{f"pred_{i}": a for i, a in enumerate(preds)}), folder)
    run.log_figure(sample_predictions(samples[:FIGURE_SAMPLES], title), figure_path(key))


def read_samples(store: Store, run_id: str, key: str) -> Dict[str, tuple]:
    """A run's kept samples on ``key``: {image id: (image uint8 HWC, gt bool, prediction uint8)}; {}
    for a run that kept none (logged before samples were kept, or not evaluated on ``key``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download(run_id, samples_path(key), tmp)
        if path is None:
            return {}
        with np.load(path) as z:
            return {str(i): (z[f"image_{k}"], z[f"gt_{k}"], z[f"pred_{k}"]) for k, i in enumerate(z["ids"])}
