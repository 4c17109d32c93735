"""Evaluate a trained model on a dataset under an evaluation protocol (``segtricks.evaluation.protocols``).

What the protocol's fields ask for is done here and in ``predict``: the batch size; with
``centre_crop`` (the reference's, docs/evaluation.md#the-references-protocol) image, ground truth and GT boxes in the reference's
resized, centre-cropped view, metrics on the crop; otherwise (ours, docs/evaluation.md#our-protocol, the default) predictions
at the configured size, each soft mask resized to its ground truth's original size. BatchNorm's mode
and the foreground selection are ``predict_raw``'s. Post-processing tricks (GF, BF) run on the mask at
the prediction size.

Returns the streaming ``SaliencyEvaluator`` (``results()``, ``records()``), as
``segtricks.evaluation.saliency_maps`` does for precomputed maps.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from segtricks.config.schema import Config, DatasetRef
from segtricks.data.datasets import build_dataset
from segtricks.data.loaders import data_loader
from segtricks.evaluation.saliency_maps import check_foreground, check_post_tricks
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.evaluation.protocols import Protocol, get_protocol, reference_boxes, reference_mask, reference_view
from segtricks.models.model import SegmentationModel
from segtricks.evaluation.prediction_cache import ArrayCache, NoCache, as_cached, key_cache, prediction_cache
from segtricks.evaluation.predict import backbone_keys, predict_raw, resize_to
from segtricks.runtime.device import precision_of
from segtricks.runtime.threads import one_thread
from segtricks.method.tricks import postprocess
from segtricks.data.views import EvalView


@torch.no_grad()
def evaluate_model(model: SegmentationModel, cfg: Config, ref: DatasetRef, tricks: Sequence[str] = (),
                   device: Optional[torch.device] = None, with_structure: bool = True,
                   progress: bool = True, keep_samples: int = 0, protocol: str | Protocol = "ours",
                   cache_dir: Optional[Path] = None, keys_dir: Optional[Path] = None) -> SaliencyEvaluator:
    """Score ``model`` on dataset ``ref`` with the post-processing ``tricks`` applied in order, under
    ``protocol`` (a registered name or a ``Protocol``, see the module docstring).

    With ``cache_dir`` (a training's ``predictions/`` folder) the raw masks are read from, or written
    to, a cache: only the first evaluation of a model on a dataset runs the model; with ``keys_dir``
    (``<output root>/keys``) the backbone's keys too, so a new model on the same backbone runs only
    its head (``segtricks.evaluation.prediction_cache``).
    The first ``keep_samples`` (id, image, mask, prediction) are kept in ``evaluator.samples``."""
    check_post_tricks(tricks)
    protocol = get_protocol(protocol)
    device = device or next(model.head.parameters()).device
    size = cfg.data.image_size
    raw = build_dataset(ref)
    view = EvalView(raw, size, ref.on_error)
    batch_size = protocol.batch_size or cfg.optim.batch_size
    loader = data_loader(view, batch_size, cfg.data.num_workers, device, view.collate)
    evaluator = SaliencyEvaluator(with_structure=with_structure)
    for s in raw.skipped:
        evaluator.skip(s.id, s.reason)
    # a cache the config turns off (cfg.cache) still rounds through float16: the switch costs time only
    precision = precision_of(device).name  # what the rows were computed under: part of each cache's key
    keys = ((key_cache(keys_dir, model, ref, raw, size, protocol.name, precision) if cfg.cache.keys else NoCache())
            if keys_dir is not None else None)
    cache = ((prediction_cache(cache_dir, model, ref, raw, size, protocol.name, precision)
              if cfg.cache.masks else NoCache()) if cache_dir is not None else None)
    seen: List[str] = []
    # a protocol whose metrics carry a prefix is named, as they are; the default's are not
    desc = f"evaluate {ref.name}" + (f" ({protocol.name} protocol)" if protocol.metric_prefix else "")
    if cache is not None and cache.complete:
        desc += " (cached predictions)"
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            for s in batch.skipped:
                evaluator.skip(s.id, s.reason)
            if not batch.ids:
                continue
            if protocol.centre_crop:
                images = [reference_view(o, size) for o in batch.originals]
                masks = [None if m is None else reference_mask(m, size) for m in batch.masks]
                boxes = [reference_boxes(b, *o.shape[-2:], size) for b, o in zip(batch.boxes, batch.originals)]
                inputs = torch.stack(images).to(device)
            else:
                images, masks, boxes = batch.originals, batch.masks, batch.boxes
                inputs = batch.images.to(device)
            raw_masks = raw_masks_of(model, inputs, batch.ids, protocol, cache, keys)
            seen += batch.ids
            with one_thread():  # small ops per image (segtricks.runtime.threads)
                # one device-to-host copy per batch: metrics run on the CPU, and each mask is resized
                # to its original size only when scored (a batch of large originals is never held)
                soft = postprocess(raw_masks.to(device), inputs, tricks, cfg).cpu()
                for image_id, image, mask, box, m in zip(batch.ids, images, masks, boxes, soft):
                    pred = m[0] if protocol.centre_crop else resize_to(m[None], [image.shape[-2:]])[0]
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
def raw_masks_of(model: SegmentationModel, inputs: torch.Tensor, ids: List[str], protocol: Protocol,
                 cache: Optional[ArrayCache | NoCache], keys: Optional[ArrayCache | NoCache]) -> torch.Tensor:
    """The batch's raw masks (B, 1, H, W): from the mask cache, else predicted (from cached backbone
    keys when there are), and recorded in the caches given. Keys (``backbone_keys``) and masks pass
    through float16 on every path, so that no number depends on which caches exist."""
    raw_masks = cache.get(ids) if cache is not None else None
    if raw_masks is not None:
        return raw_masks
    features = keys.get(ids) if keys is not None else None
    if features is None:  # computed as every evaluation path computes them, cached or not
        features = backbone_keys(model, inputs)
        if keys is not None:
            keys.put(ids, features)
    # at the cache's precision whether cached or not: with a mask cache, without one (the validation
    # hook) and when read back, the same numbers
    raw_masks = as_cached(predict_raw(model, inputs, protocol, features.to(inputs.device)))
    if cache is not None:
        cache.put(ids, raw_masks)
    return raw_masks
