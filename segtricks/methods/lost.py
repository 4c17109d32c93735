"""LOST (Siméoni et al., BMVC 2021), as its code computes it (valeoai/LOST at fcedbec,
``object_discovery.py::lost``).

1. Keys of the last block, CLS dropped, **not** normalised; A = f fᵀ, raw dot products (float32).
2. Degrees: with the diagonal zeroed and negatives set to 0, each patch's count of positive entries.
   The seed is the patch of lowest degree, found as the authors find it: ``torch.argsort`` of the
   negated degrees, descending. That sort is not stable and degrees are integers, so among tied
   lowest-degree patches the seed is the one torch's sort puts first (on the CPU, what the authors'
   CPU run gives; the parity tests compare seeds only where the minimum is unique).
3. Seed expansion: of the k = 100 lowest-degree patches (that order's first 100), those with a positive
   affinity to the seed (the seed itself, since A_ss = ‖f_s‖² > 0) are summed: M = Σ A[similar, :].
4. The mask is the seed's 4-connected component of M > 0; the box its extent × the patch, clipped.

LOST has no saliency stage of its own: for saliency the same mask is scored (the full image,
zero-padded to the patch, the mask cut back to the image). Where the seed is outside M > 0 the
authors' code raises ("should not happen"); here the mask is empty and the box the seed's patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segtricks.methods.base import Method, MethodOutput
from segtricks.methods.patches import component_at, pad_to_patches, patch_box, upsampled


@dataclass
class Seed:
    degree: np.ndarray  # (N,) int: positive affinities to the other patches
    seed: int
    mask: np.ndarray  # (h, w) bool: the seed's component of the expanded map


def lost(keys: torch.Tensor, grid_hw, k_patches: int) -> Seed:
    """LOST's seed and expansion on keys (N, C) of a ``grid_hw`` patch grid (row-major)."""
    affinity = keys.float() @ keys.float().T
    scored = affinity.clone()
    scored.fill_diagonal_(0)
    scored[scored < 0] = 0
    degree = torch.sum(scored > 0, dim=1)
    order = torch.argsort(-degree.type(torch.float32), descending=True)  # the authors' (unstable) sort
    seed = order[0]
    potentials = order[:k_patches]
    similars = potentials[affinity[seed, potentials] > 0.0]
    expanded = torch.sum(affinity[similars, :], dim=0)
    mask = component_at((expanded > 0).reshape(grid_hw).numpy(), int(seed), connectivity=4)
    return Seed(degree.numpy(), int(seed), mask)


class Lost(Method):
    """LOST on a frozen backbone's keys (``lost``: k_patches). Trains nothing."""

    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        h, w = image.shape[-2:]
        x = pad_to_patches(self.normalise(image), self.patch)
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        found = lost(self.keys(x).cpu(), grid, self.cfg.lost.k_patches)
        if not found.mask.any():  # the seed outside M > 0: the authors' code raises here
            seed_only = np.zeros(grid, dtype=bool)
            seed_only.flat[found.seed] = True
            return MethodOutput(upsampled(found.mask, self.patch, (h, w)), patch_box(seed_only, self.patch, (h, w)))
        return MethodOutput(upsampled(found.mask, self.patch, (h, w)), patch_box(found.mask, self.patch, (h, w)))
