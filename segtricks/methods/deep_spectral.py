"""Deep Spectral Methods' single-object localisation (Melas-Kyriazi et al., CVPR 2022), as its code
computes it (lukemelas/deep-spectral-segmentation at b89b650: ``extract/extract.py::_extract_eig``,
then ``object-localization/object_discovery.py::get_bbox_from_patch_mask``).

1. Keys of the last block, CLS dropped, L2-normalised; W = f fᵀ with negatives set to 0 (``W /= max W``
   changes nothing for normalised keys: the diagonal is 1); D = diag(row sums), a sum below 1e-12 set
   to 1. The colour affinity is off (the entry point's default ``image_color_lambda`` is 0).
2. The second smallest generalised eigenvector of (D − W, D) (the authors: ARPACK shift-invert; the
   dense reference path here solves the same problem).
3. Its sign: flipped when more than half but not all of its entries are positive, so that the
   positive side is the minority; the patch mask is v > 0 (threshold 0, not the mean).
4. The box: the largest **8-connected** component (``skimage.measure.label``'s default), × the
   patch, clipped; an empty mask covers the whole image.

The image is cropped (not padded) to a multiple of the patch. For saliency the mask is the patch mask
(every positive patch, as the authors' segmentation step takes it, without their dense CRF), its
rows and columns beyond the crop left background.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from segtricks.methods.base import Method, MethodOutput
from segtricks.methods.patches import crop_to_patches, largest_component, patch_box, upsampled
from segtricks.methods.spectral import second_eigenvector


def minority_positive(v: np.ndarray) -> np.ndarray:
    """The authors' sign rule: ``0.5 < mean(v > 0) < 1`` flips v."""
    return -v if 0.5 < np.mean(v > 0) < 1.0 else v


def patch_mask(keys: torch.Tensor, grid_hw, solver: str) -> np.ndarray:
    """(h, w) bool: the positive, minority side of the second eigenvector."""
    feats = F.normalize(keys.float(), p=2, dim=-1)
    affinity = feats @ feats.T
    affinity = (affinity * (affinity > 0)).double()
    degree = affinity.sum(1)
    degree[degree < 1e-12] = 1.0
    v = minority_positive(second_eigenvector(affinity, degree, solver).astype(np.float32))  # the authors store float32
    return (v > 0).reshape(grid_hw)


def localisation_box(mask: np.ndarray, patch: int, image_hw, connectivity: int) -> np.ndarray:
    """``get_bbox_from_patch_mask``: the largest component's box; an empty mask is the whole image."""
    if 0.5 < mask.mean() < 1.0:  # the authors flip again here (a no-op after the sign rule)
        mask = ~mask
    elif not mask.any():
        mask = np.ones_like(mask)
    return patch_box(largest_component(mask, connectivity), patch, image_hw)


class DeepSpectral(Method):
    """Deep Spectral's localisation on a frozen backbone's keys (``deep_spectral``: connectivity,
    solver). Trains nothing."""

    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        h, w = image.shape[-2:]
        x = crop_to_patches(self.normalise(image), self.patch)
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        mask = patch_mask(self.keys(x), grid, self.cfg.deep_spectral.solver)
        box = localisation_box(mask, self.patch, (h, w), self.cfg.deep_spectral.connectivity)
        return MethodOutput(upsampled(mask, self.patch, (h, w)), box)
