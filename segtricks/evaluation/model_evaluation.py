"""Evaluate a model, or a folder of saliency maps, on a dataset: SPEC §7's protocol, or the reference's.

Ours (``protocol="ours"``, the default): predictions are made at the configured size; each soft mask
is resized to its ground truth's original size; foreground is chosen per image with BatchNorm in eval
mode. Post-processing tricks (GF, BF) run on the mask at the prediction size for models, and at full
size for precomputed maps.

The reference's (``protocol="reference"``, SPEC §8.2–8.4, for comparison with the paper's tables):
image, ground truth and GT boxes are resized so that the shorter side is the configured size and
centre-cropped to a square of that size; the model predicts on batches of ``REFERENCE_BATCH`` with
BatchNorm in train mode and one inversion decision per batch; metrics are computed on the crop.
Precomputed maps get the same crop (BatchNorm and inversion do not apply to them).

Both return the streaming ``SaliencyEvaluator`` (``results()``, ``records()``). Maps are scored by
``segtricks.evaluation.map_evaluation``, which imports torch only for what needs it (here: the reference view).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from tqdm.auto import tqdm

from segtricks.spec.config import Config, DatasetRef
from segtricks.data.datasets import build_dataset
from segtricks.data.loaders import data_loader
from segtricks.evaluation.map_evaluation import check_foreground, check_post_tricks, check_protocol
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.models.model import SegmentationModel
from segtricks.evaluation.prediction_cache import ArrayCache, NoCache, as_cached, key_cache, prediction_cache
from segtricks.evaluation.predict import predict_raw, resize_to
from segtricks.engine.threads import one_thread
from segtricks.method.tricks import postprocess
from segtricks.data.views import EvalView


REFERENCE_BATCH = 8  # the reference evaluated in batches of 8, and inverted per batch (SPEC §8.3)


def reference_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) resized so that its shorter side is ``size`` (bilinear), then centre-cropped to
    size × size, as the reference's evaluation transform (torchvision Resize(size) + CenterCrop)."""
    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def reference_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """The ground truth (H, W) in the reference's view: resized bilinearly, ≥ 0.5, centre-cropped."""
    return reference_view(mask[None].float(), size)[0] >= 0.5


def reference_boxes(boxes: Optional[np.ndarray], height: int, width: int, size: int) -> Optional[np.ndarray]:
    """GT boxes (K, 4) mapped into the reference's view (same resize and crop), clipped to it; boxes
    left empty by the crop are dropped."""
    if boxes is None:
        return None
    # torchvision's Resize(int): the shorter side becomes size, the longer int(size · long / short)
    new_h, new_w = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # as torchvision's crop
    scaled = np.asarray(boxes, dtype=np.float64) * [new_w / width, new_h / height, new_w / width, new_h / height]
    moved = np.clip(scaled - [left, top, left, top], 0, size)
    return moved[(moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])]


@torch.no_grad()
def evaluate_model(model: SegmentationModel, cfg: Config, ref: DatasetRef, tricks: Sequence[str] = (),
                   device: Optional[torch.device] = None, with_structure: bool = True,
                   progress: bool = True, keep_samples: int = 0, protocol: str = "ours",
                   cache_dir: Optional[Path] = None, keys_dir: Optional[Path] = None) -> SaliencyEvaluator:
    """Score ``model`` on dataset ``ref`` with the post-processing ``tricks`` applied in order, under
    ``protocol`` ("ours" or "reference", see the module docstring).

    With ``cache_dir`` (a training's ``predictions/`` folder) the raw masks are read from, or written
    to, a cache: only the first evaluation of a model on a dataset runs the model; with ``keys_dir``
    (``<output root>/keys``) the backbone's keys too, so a new model on the same backbone runs only
    its head (``segtricks.evaluation.prediction_cache``).
    The first ``keep_samples`` (id, image, mask, prediction) are kept in ``evaluator.samples``."""
    check_post_tricks(tricks)
    check_protocol(protocol)
    device = device or next(model.head.parameters()).device
    size = cfg.data.image_size
    raw = build_dataset(ref)
    view = EvalView(raw, size, ref.on_error)
    batch_size = REFERENCE_BATCH if protocol == "reference" else cfg.optim.batch_size
    loader = data_loader(view, batch_size, cfg.data.num_workers, device, view.collate)
    evaluator = SaliencyEvaluator(with_structure=with_structure)
    for s in raw.skipped:
        evaluator.skip(s.id, s.reason)
    # a cache the config turns off (cfg.cache) still rounds through float16: the switch costs time only
    keys = ((key_cache(keys_dir, model, ref, raw, size, protocol) if cfg.cache.keys else NoCache())
            if keys_dir is not None else None)
    cache = ((prediction_cache(cache_dir, model, ref, raw, size, protocol, keys is not None)
              if cfg.cache.masks else NoCache()) if cache_dir is not None else None)
    seen: List[str] = []
    desc = f"evaluate {ref.name}" + (" (reference protocol)" if protocol == "reference" else "")
    if cache is not None and cache.complete:
        desc += " (cached predictions)"
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            for s in batch.skipped:
                evaluator.skip(s.id, s.reason)
            if not batch.ids:
                continue
            if protocol == "reference":
                images = [reference_view(o, size) for o in batch.originals]
                masks = [None if m is None else reference_mask(m, size) for m in batch.masks]
                boxes = [reference_boxes(b, *o.shape[-2:], size) for b, o in zip(batch.boxes, batch.originals)]
                inputs = torch.stack(images).to(device)
            else:
                images, masks, boxes = batch.originals, batch.masks, batch.boxes
                inputs = batch.images.to(device)
            raw_masks = raw_masks_of(model, inputs, batch.ids, protocol, cache, keys)
            seen += batch.ids
            with one_thread():  # small ops per image (segtricks.engine.threads)
                # one device-to-host copy per batch: metrics run on the CPU, and each mask is resized
                # to its original size only when scored (a batch of large originals is never held)
                soft = postprocess(raw_masks.to(device), inputs, tricks, cfg).cpu()
                for image_id, image, mask, box, m in zip(batch.ids, images, masks, boxes, soft):
                    pred = m[0] if protocol == "reference" else resize_to(m[None], [image.shape[-2:]])[0]
                    evaluator.update(pred, mask, image_id, boxes=box)
                    if len(evaluator.samples) < keep_samples:
                        evaluator.samples.append((image_id, image, mask, pred))
    except BaseException:  # a failure or a kill: what was predicted so far is not a cache
        for c in (cache, keys):
            if c is not None:
                c.discard()
        raise
    for c in (cache, keys):
        if c is not None:
            c.close(seen)
    check_foreground(evaluator, ref)
    return evaluator


@torch.no_grad()
def raw_masks_of(model: SegmentationModel, inputs: torch.Tensor, ids: List[str], protocol: str,
                 cache: Optional[ArrayCache | NoCache], keys: Optional[ArrayCache | NoCache]) -> torch.Tensor:
    """The batch's raw masks (B, 1, H, W): from the mask cache, else predicted (from cached backbone
    keys when there are), and recorded in the caches given."""
    raw_masks = cache.get(ids) if cache is not None else None
    if raw_masks is not None:
        return raw_masks
    features = keys.get(ids) if keys is not None else None
    if keys is not None and features is None:
        features = as_cached(model.backbone(model.normalise(inputs)))
        keys.put(ids, features)
    raw_masks = predict_raw(model, inputs, protocol, None if features is None else features.to(inputs.device))
    if cache is not None:
        raw_masks = as_cached(raw_masks)
        cache.put(ids, raw_masks)
    return raw_masks


def describe_skipped(name: str, skipped: Sequence[tuple], shown: int = 10) -> str:
    """One line: how many images of dataset ``name`` were skipped, and the first ``shown`` ids."""
    ids = ", ".join(i for i, _ in skipped[:shown]) + (f", … ({len(skipped) - shown} more)" if len(skipped) > shown else "")
    return f"{name}: skipped {len(skipped)} image(s) that could not be read: {ids}"


def skipped_csv(skipped: Sequence[tuple]) -> str:
    """The skipped images as CSV (image_id, reason): the artifact that lists them."""
    return pd.DataFrame(list(skipped), columns=["image_id", "reason"]).to_csv(index=False)
