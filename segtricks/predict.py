"""Foreground masks from a trained model: eval mode, per-image inversion, optional post-processing."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

from segtricks.config import Config
from segtricks.model import SegmentationModel
from segtricks.tricks import postprocess


def select_foreground(mask: torch.Tensor) -> torch.Tensor:
    """Invert each mask (B, 1, H, W) whose mean is above 0.5: the object is the smaller side.

    Decided per image (the reference decided per batch of 8: SPEC §8.3).
    """
    flip = mask.mean(dim=(1, 2, 3), keepdim=True) > 0.5
    return torch.where(flip, 1 - mask, mask)


@torch.no_grad()
def predict_masks(model: SegmentationModel, images: torch.Tensor, cfg: Config,
                  tricks: Sequence[str] = ()) -> torch.Tensor:
    """Soft foreground masks (B, 1, H, W) in [0, 1] at the input size.

    BatchNorm uses its running statistics (eval mode), never the test batch's (SPEC §8.2); the
    caller's train/eval mode is restored afterwards. ``tricks`` names post-processing tricks.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.is_cuda):
            fine = model(images)["fine"]
        mask = select_foreground(fine.float())
        return postprocess(mask, images, tricks, cfg)
    finally:
        model.train(was_training)


def resize_to(masks: torch.Tensor, sizes: List[torch.Size]) -> List[torch.Tensor]:
    """Upsample each soft mask (1, H, W) to its ground truth's original size (bilinear)."""
    return [F.interpolate(m[None], size=tuple(s), mode="bilinear", align_corners=False)[0, 0]
            for m, s in zip(masks, sizes)]
