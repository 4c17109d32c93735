"""Foreground masks from a trained model, under an evaluation protocol (``segtricks.evaluation.protocols``).

Ours (docs/evaluation.md#our-protocol): BatchNorm uses its running statistics (eval mode), and each mask whose mean is above
0.5 is inverted on its own. The reference's (docs/evaluation.md#the-references-protocol), reproduced on request only: BatchNorm
normalises with the test batch's statistics (train mode, ``Protocol.batch_statistics``), and one
inversion decision is taken for the whole batch (``Protocol.per_batch_foreground``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from segtricks.runtime.device import Precision, precision_of
from segtricks.config.schema import Config
from segtricks.evaluation.protocols import Protocol, get_protocol
from segtricks.models.model import SegmentationModel
from segtricks.method.tricks import postprocess
from segtricks.evaluation.prediction_cache import as_cached


def select_foreground(mask: torch.Tensor) -> torch.Tensor:
    """Invert each mask (B, 1, H, W) whose mean is above 0.5: the object is the smaller side."""
    flip = mask.mean(dim=(1, 2, 3), keepdim=True) > 0.5
    return torch.where(flip, 1 - mask, mask)


def select_foreground_per_batch(mask: torch.Tensor) -> torch.Tensor:
    """The reference's inversion (docs/evaluation.md#the-references-protocol): invert every mask of the batch when the batch mean is
    above 0.5, so an image can be flipped because of its neighbours in the batch."""
    return 1 - mask if mask.mean() > 0.5 else mask


@contextmanager
def evaluation_mode(model: SegmentationModel, protocol: Protocol) -> Iterator[None]:
    """Eval mode, or train mode with the BatchNorm buffers restored afterwards (``batch_statistics``):
    the test batches' statistics must not leak into the model's running statistics."""
    was_training = model.training
    saved = [b.clone() for b in model.head.buffers()] if protocol.batch_statistics else []
    model.train(protocol.batch_statistics)
    try:
        yield
    finally:
        model.train(was_training)
        for buffer, value in zip(model.head.buffers(), saved):
            buffer.copy_(value)


@torch.no_grad()
def backbone_keys(model: SegmentationModel, images: torch.Tensor, precision: Optional[Precision] = None) -> torch.Tensor:
    """The backbone's keys of ``images`` as every evaluation path uses them: computed under the
    device's precision (``precision_of``), then rounded through float16 as the keys cache stores
    them, so that an evaluation with the cache, without it, the validation hook and ``segment`` see
    the same keys (and a cache built under one precision is never read under another: its key says
    which)."""
    precision = precision or precision_of(images.device)
    with precision.autocast(images.device.type):
        keys = model.backbone(model.normalise(images))
    # contiguous as rows read from the cache are: the head's convolutions pick their kernel by layout,
    # and the backbone's (B, C, h, w) is a channels-last view, which rounds differently (4e-7)
    return as_cached(keys.float()).contiguous()


@torch.no_grad()
def predict_raw(model: SegmentationModel, images: torch.Tensor, protocol: str | Protocol = "ours",
                features: Optional[torch.Tensor] = None, precision: Optional[Precision] = None) -> torch.Tensor:
    """Soft float32 foreground masks (B, 1, H, W) in [0, 1] at the input size, before any post-processing.

    ``protocol``: a registered name or a ``Protocol`` (see the module docstring); the caller's
    train/eval mode is restored afterwards. ``features``: the backbone's keys of ``images``, when
    already known (else ``backbone_keys``). ``precision``: the model's (default: ``precision_of`` the
    images' device; the tests run bf16 on the CPU)."""
    protocol = get_protocol(protocol)
    precision = precision or precision_of(images.device)
    if features is None:
        features = backbone_keys(model, images, precision)
    with evaluation_mode(model, protocol):
        with precision.autocast(images.device.type):
            fine = model(images, features)["fine"]
    select = select_foreground_per_batch if protocol.per_batch_foreground else select_foreground
    # float32 before anything downstream (the inversion's mean > 0.5, GF/BF, the float16 caches)
    return select(fine.float())


@torch.no_grad()
def predict_masks(model: SegmentationModel, images: torch.Tensor, cfg: Config,
                  tricks: Sequence[str] = (), protocol: str | Protocol = "ours") -> torch.Tensor:
    """``predict_raw``, then the post-processing ``tricks`` (names), in order."""
    return postprocess(predict_raw(model, images, protocol), images, tricks, cfg)


def resize_to(masks: torch.Tensor, sizes: List[torch.Size]) -> List[torch.Tensor]:
    """Upsample each soft mask (1, H, W) to its ground truth's original size (bilinear)."""
    return [F.interpolate(m[None], size=tuple(s), mode="bilinear", align_corners=False)[0, 0]
            for m, s in zip(masks, sizes)]
