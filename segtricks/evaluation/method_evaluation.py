"""Score a training-free method (``segtricks.methods``) on a dataset, under our protocol
(docs/evaluation.md#our-protocol), as ``model_evaluation`` scores a trained model.

Each image is predicted at its own size, as the method's authors run it (their preprocessing: resize,
pad or crop to the patch); the mask comes back at the image's size. Post-processing tricks (GF, BF)
then run on it at that size, with the image as guide, as the paper's Table 5 applies them to TokenCut's
masks. CorLoc scores the method's own box when no trick changed the mask (LOST's seed component, Deep
Spectral's largest 8-connected component), else the box of the post-processed mask's largest component.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from segtricks.config.schema import Config, DatasetRef
from segtricks.data.datasets import build_dataset
from segtricks.data.loaders import data_loader
from segtricks.data.views import EvalView
from segtricks.evaluation.metrics import SaliencyEvaluator
from segtricks.evaluation.saliency_maps import check_foreground, check_post_tricks
from segtricks.method.tricks import postprocess
from segtricks.methods.base import Method
from segtricks.runtime.threads import one_thread


@torch.no_grad()
def evaluate_method(method: Method, cfg: Config, ref: DatasetRef, tricks: Sequence[str] = (),
                    device: torch.device = torch.device("cpu"), with_structure: bool = True, progress: bool = True,
                    keep_samples: int = 0) -> SaliencyEvaluator:
    """``method`` (``segtricks.methods.registry.build_method(cfg, device)``) on dataset ``ref``, then the
    post-processing ``tricks`` in order; the first ``keep_samples`` (id, image, mask, prediction) are
    kept in ``evaluator.samples``."""
    check_post_tricks(tricks)
    raw = build_dataset(ref)
    task = "boxes" if raw.has_boxes and not raw.has_masks else "saliency"
    view = EvalView(raw, cfg.data.image_size, ref.on_error)
    loader = data_loader(view, 1, cfg.data.num_workers, device, view.collate)  # one image: each at its own size
    evaluator = SaliencyEvaluator(with_structure=with_structure)
    for s in raw.skipped:
        evaluator.skip(s.id, s.reason)
    for batch in tqdm(loader, desc=f"{cfg.method} on {ref.name}", disable=not progress, leave=False):
        for s in batch.skipped:
            evaluator.skip(s.id, s.reason)
        for image_id, image, mask, boxes in zip(batch.ids, batch.originals, batch.masks, batch.boxes):
            out = method.predict(image.to(device), task)
            pred, box = torch.from_numpy(out.mask), out.box
            if tricks:
                with one_thread(device.type == "cpu"):
                    pred = postprocess(pred[None, None].to(device), image[None].to(device), tricks, cfg)[0, 0].cpu()
                box = None  # the post-processed mask's own box
            evaluator.update(pred, mask, image_id, boxes=boxes, pred_box=box)
            if len(evaluator.samples) < keep_samples:
                evaluator.samples.append((image_id, image, mask, pred))
    check_foreground(evaluator, ref)
    return evaluator
