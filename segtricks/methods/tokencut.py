"""TokenCut (Wang et al., CVPR 2022), as its code computes it (YangtaoWANG95/TokenCut at fed52cd):
``object_discovery.py::ncut`` for CorLoc, ``unsupervised_saliency_detection/get_saliency.py`` for saliency.

1. Keys of the last block, CLS dropped, L2-normalised per patch; A = f fᵀ, the cosine.
2. A binary graph: 1 where A > τ (0.2), ε (1e-5) elsewhere (the diagonal is 1); D = diag(Σ_j A_ij).
3. The second smallest generalised eigenvector of (D − A, D) (``segtricks.methods.spectral``).
4. The bipartition: v > mean(v), not > 0 (the mean threshold is not invariant to D's scaling).
5. The seed is argmax |v|; if it is not in the bipartition, the bipartition is flipped: the
   foreground is the side holding the largest |v|.
6. The mask is the seed's 4-connected component; the box its extent × the patch, clipped to the image.

One departure, where the authors' output is not defined: when every cosine exceeds τ the graph is
complete, λ = 1 has multiplicity N − 1 and any vector orthogonal to D·1 is "the" second eigenvector;
their solver returns whichever its rounding gives (different between runs and thread counts: measured
on the random-init demo backbone, which makes such graphs). Nothing separates any two patches, so the
whole image is the mask here, on every run.

Saliency: the image resized to the nearest multiple of 16 per side (PIL LANCZOS), the mask upsampled
nearest to the original size. CorLoc: the full image, zero-padded to the patch. The eigenvector
itself is not the output: TokenCut's saliency numbers, and its "+BS", are of the binary seed
component (the bilateral solver runs on it, and its soft output is what is scored).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segtricks.methods.base import Method, MethodOutput
from segtricks.methods.patches import (component_at, mask_box, nearest_to, pad_to_patches, patch_box,
                                       resize_to_patches, upsampled)
from segtricks.methods.spectral import second_eigenvector


@dataclass
class Bipartition:
    """What TokenCut computes on one patch grid."""

    eigenvector: np.ndarray  # (h, w), sign-aligned so that the seed is foreground; xᵀDx = 1 (zeros for a complete graph)
    seed: int  # flat index of argmax |v|
    mask: np.ndarray  # (h, w) bool: the seed's 4-connected component of the foreground side


def ncut(keys: torch.Tensor, grid_hw, tau: float, eps: float, solver: str) -> Bipartition:
    """TokenCut's ``ncut`` on keys (N, C) of a ``grid_hw`` patch grid (row-major)."""
    feats = F.normalize(keys.float(), p=2, dim=1)
    cosine = feats @ feats.T  # float32, as the authors' torch product
    graph = cosine > tau
    if bool(graph.all()):  # complete graph: no cut is preferred (module docstring)
        return Bipartition(np.zeros(grid_hw), 0, np.ones(grid_hw, dtype=bool))
    affinity = torch.full_like(cosine, eps, dtype=torch.float64)  # as numpy's where on the boolean graph
    affinity[graph] = 1.0
    v = second_eigenvector(affinity, affinity.sum(1), solver)
    foreground = v > v.sum() / len(v)
    seed = int(np.argmax(np.abs(v)))
    if not foreground[seed]:
        v, foreground = -v, ~foreground
    mask = component_at(foreground.reshape(grid_hw), seed, connectivity=4)
    return Bipartition(v.reshape(grid_hw), seed, mask)


class TokenCut(Method):
    """TokenCut on a frozen backbone's keys (``tokencut``: tau, eps, solver). Trains nothing."""

    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        c = self.cfg.tokencut
        h, w = image.shape[-2:]
        if task == "saliency":
            x = self.normalise(resize_to_patches(image, self.patch))
        else:
            x = pad_to_patches(self.normalise(image), self.patch)
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        cut = ncut(self.keys(x), grid, c.tau, c.eps, c.solver)
        if task == "saliency":
            mask = nearest_to(cut.mask, (h, w))
            return MethodOutput(mask, mask_box(mask))
        return MethodOutput(upsampled(cut.mask, self.patch, (h, w)), patch_box(cut.mask, self.patch, (h, w)))

