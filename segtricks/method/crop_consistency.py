"""The multi-scale crop-consistency trick (docs/method.md#crop-consistency): a student/teacher loss between scales.

The student's full-image fine mask, cropped to a random square window and resized to the input
size, must agree with the teacher: the model's own prediction on the crop, sharpened by the guided
filter and detached (stop-gradient). The crop is also a training image with its own NCut term.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from segtricks.method.guided_filter import guided_filter
from segtricks.method.losses import ncut_loss, thresholded_affinity


def sample_crop_boxes(batch: int, size: int, frac: float,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Square windows of side round(frac·size), one per image, (B, 3) as (top, left, side).

    Top and left are uniform over every valid position 0 … size − side. (The reference drew them
    so that they always came out as row 80 and columns 10–29: docs/method.md#defects-of-the-reference-that-we-fix.)
    """
    if not 0 < frac <= 1:
        raise ValueError(f"crop.frac must be in (0, 1], got {frac}")
    side = max(1, round(frac * size))
    top_left = torch.randint(0, size - side + 1, (batch, 2), generator=generator)
    return torch.cat([top_left, torch.full((batch, 1), side)], dim=1)


def crop_and_resize(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Cut each image's window and resize it (bilinear) back to the input size."""
    h, w = x.shape[-2:]
    crops = [F.interpolate(xi[None, :, t:t + s, l:l + s], size=(h, w), mode="bilinear",
                           align_corners=False) for xi, (t, l, s) in zip(x, boxes.tolist())]
    return torch.cat(crops)


def crop_consistency_terms(
    predict: Callable[[torch.Tensor], Dict[str, torch.Tensor]],
    images: torch.Tensor,
    student_fine: torch.Tensor,
    boxes: torch.Tensor,
    tau: float,
    eps: float,
    gf_radius: int,
    gf_eps: float,
) -> Dict[str, torch.Tensor]:
    """Loss terms ``crop_ncut`` and ``crop_eq`` (unweighted) for one batch.

    ``predict(images01, fine_grad=...)`` returns the model's ``coarse``, ``fine`` and ``features`` for
    a batch of [0, 1] images; ``student_fine`` is the fine mask of the full images (with gradient).
    """
    crops = crop_and_resize(images, boxes)
    # The crop's fine mask is only the teacher (detached): no graph for its full-resolution branch,
    # which would otherwise be built beside the batch's own; only the coarse mask gets a loss.
    out = predict(crops, fine_grad=False)
    crop_ncut = ncut_loss(out["coarse"], thresholded_affinity(out["features"], tau, eps))
    # predict may run under bf16 autocast: the teacher's GF (ratios cov/(var + eps)) and L_eq are
    # computed on masks upcast to float32 (guided_filter returns its input's dtype), as every loss.
    with torch.no_grad():  # the teacher: GF-sharpened crop prediction, never differentiated
        teacher = guided_filter(out["fine"].detach().float(), crops, gf_radius, gf_eps).clamp(0, 1)
    student = crop_and_resize(student_fine.float(), boxes)
    return {"crop_ncut": crop_ncut, "crop_eq": F.mse_loss(student, teacher)}
