"""Evaluate a model, or a folder of saliency maps, on a dataset: SPEC §7's protocol.

Predictions are made at the configured size; each soft mask is resized to its ground truth's
original size; foreground is chosen per image. Post-processing tricks (GF, BF) run on the mask at
the prediction size for models, and at full size for precomputed maps. Returns the streaming
``SaliencyEvaluator`` (``results()``, ``records()``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from segtricks.config import Config, DatasetRef
from segtricks.datasets import IMAGE_SUFFIXES, DatasetError, EvalView, Sample, build_dataset, load_or_skip
from segtricks.metrics import SaliencyEvaluator
from segtricks.model import SegmentationModel
from segtricks.predict import predict_masks, resize_to
from segtricks.tricks import TRICKS, get_tricks, postprocess


def _check_post(tricks: Sequence[str]) -> None:
    for trick in get_tricks(tricks):
        if trick.stage != "post":
            post = [n for n in TRICKS.names() if TRICKS.get(n).stage == "post"]
            raise ValueError(f"trick {trick.name!r} is a training trick; evaluation applies only "
                             f"post-processing tricks ({', '.join(post)})")


@torch.no_grad()
def evaluate_model(model: SegmentationModel, cfg: Config, ref: DatasetRef, tricks: Sequence[str] = (),
                   device: Optional[torch.device] = None, with_structure: bool = True,
                   progress: bool = True, keep_samples: int = 0) -> SaliencyEvaluator:
    """Score ``model`` on dataset ``ref`` with the post-processing ``tricks`` applied in order.

    The first ``keep_samples`` (id, image, mask, prediction) are kept in ``evaluator.samples``."""
    _check_post(tricks)
    device = device or next(model.head.parameters()).device
    view = EvalView(build_dataset(ref), cfg.data.image_size, ref.on_error)
    loader = DataLoader(view, batch_size=cfg.optim.batch_size, collate_fn=view.collate,
                        num_workers=cfg.data.num_workers)
    evaluator = SaliencyEvaluator(with_structure=with_structure)
    for batch in tqdm(loader, desc=f"evaluate {ref.name}", disable=not progress, leave=False):
        if not batch.ids:
            continue
        soft = predict_masks(model, batch.images.to(device), cfg, tricks)
        sizes = [o.shape[-2:] for o in batch.originals]
        for image_id, image, pred, mask, boxes in zip(batch.ids, batch.originals, resize_to(soft, sizes),
                                                      batch.masks, batch.boxes):
            evaluator.update(pred, None if mask is None else mask.to(pred.device), image_id, boxes=boxes)
            if len(evaluator.samples) < keep_samples:
                evaluator.samples.append((image_id, image, mask, pred.cpu()))
    return evaluator


def find_map(maps_dir: Path, image_id: str) -> Path:
    for suffix in (".png",) + IMAGE_SUFFIXES:
        path = maps_dir / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise DatasetError(f"no saliency map for image {image_id!r} in {maps_dir} (expected {image_id}.png)")


def centre_prior(h: int, w: int, sigma: float = 0.25) -> torch.Tensor:
    """A centred Gaussian map exp(−d²/2σ²), d the distance to the centre in units of each side."""
    y = (torch.arange(h, dtype=torch.float64) + 0.5) / h - 0.5
    x = (torch.arange(w, dtype=torch.float64) + 0.5) / w - 0.5
    return torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2))


def evaluate_maps(maps_dir: str | Path | None, cfg: Config, ref: DatasetRef, tricks: Sequence[str] = (),
                  with_structure: bool = True, progress: bool = True, keep_samples: int = 0) -> SaliencyEvaluator:
    """Score a folder of grayscale maps ``<id>.png`` (0–255, the ground truth's size) on ``ref``.

    ``maps_dir=None`` scores the centred Gaussian prior instead (the no-learning baseline).
    """
    _check_post(tricks)
    if maps_dir is not None:
        maps_dir = Path(maps_dir)
        if not maps_dir.is_dir():
            raise DatasetError(f"maps folder {maps_dir} does not exist")
    raw = build_dataset(ref)
    if not (raw.has_masks or raw.has_boxes):
        raise DatasetError(f"dataset {ref.name!r} has neither masks nor boxes to evaluate against")
    evaluator = SaliencyEvaluator(with_structure=with_structure)
    label = maps_dir.name if maps_dir is not None else "centre prior"
    for index in tqdm(range(len(raw)), desc=f"evaluate {label} on {ref.name}", disable=not progress):
        sample = load_or_skip(raw, index, ref.on_error)
        if sample is None:
            continue
        try:
            soft = (centre_prior(sample.image.height, sample.image.width) if maps_dir is None
                    else read_map(maps_dir, sample))
        except DatasetError:
            if ref.on_error != "skip":
                raise
            continue
        image = torch.from_numpy(np.asarray(sample.image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if tricks:
            soft = postprocess(soft[None, None].float(), image[None], tricks, cfg)[0, 0].double()
        mask = None if sample.mask is None else torch.from_numpy(sample.mask)
        evaluator.update(soft, mask, sample.id, boxes=sample.boxes)
        if len(evaluator.samples) < keep_samples:
            evaluator.samples.append((sample.id, image, mask, soft.float()))
    return evaluator


def read_map(maps_dir: Path, sample: Sample) -> torch.Tensor:
    """The sample's map as float64 in [0, 1]; a missing map or one of another size is an error."""
    path = find_map(maps_dir, sample.id)
    with Image.open(path) as im:
        soft = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float64) / 255.0)
    if soft.shape != (sample.image.height, sample.image.width):
        raise DatasetError(f"map {path} is {soft.shape[1]}×{soft.shape[0]} but image {sample.id} is "
                           f"{sample.image.width}×{sample.image.height}; maps must have their image's size")
    return soft
