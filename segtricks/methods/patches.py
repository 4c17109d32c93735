"""Patch grids as the methods' authors handle them: how an image becomes a grid (pad, crop or resize),
connected components of a patch mask (4- or 8-connected), and a component's box in image pixels.

- TokenCut and LOST (CorLoc): the ImageNet-normalised image zero-padded at the bottom and right to a
  multiple of the patch (zero in normalised space, the mean colour), no resize (``pad_to_patches``).
- TokenCut (saliency): the image resized to the nearest multiple of 16 per side, PIL LANCZOS
  (``resize_to_patches``); its mask goes back to the original size by nearest upsampling.
- Deep Spectral: the image cropped to the largest multiple of the patch (``crop_to_patches``).
Components: ``scipy.ndimage.label``'s default 4-connectivity (LOST, TokenCut, FOUND) or the full 8
(Deep Spectral's ``skimage.measure.label``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

CONNECTIVITY = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), bool)}


def pad_to_patches(normalised: torch.Tensor, patch: int) -> torch.Tensor:
    """(3, H, W) → (3, ⌈H/p⌉p, ⌈W/p⌉p), zeros at the bottom and right."""
    h, w = normalised.shape[-2:]
    return F.pad(normalised, (0, -w % patch, 0, -h % patch))


def crop_to_patches(normalised: torch.Tensor, patch: int) -> torch.Tensor:
    """(3, H, W) → (3, ⌊H/p⌋p, ⌊W/p⌋p), the top-left part."""
    h, w = normalised.shape[-2:]
    return normalised[..., : h // patch * patch, : w // patch * patch]


def resize_to_patches(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] → each side resized to ``round(side / p) · p`` with PIL's LANCZOS, as
    TokenCut's ``utils.resize_pil`` (Python's round: halves to even)."""
    h, w = image.shape[-2:]
    pil = Image.fromarray((image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
    size = (int(round(w / patch)) * patch, int(round(h / patch)) * patch)
    resized = np.asarray(pil.resize(size, resample=Image.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(resized).permute(2, 0, 1).to(image.device)


def component_at(mask: np.ndarray, index: int, connectivity: int = 4) -> np.ndarray:
    """The connected component of ``mask`` (h, w) holding the flat ``index`` (empty if it is background)."""
    labels, _ = ndimage.label(mask, structure=CONNECTIVITY[connectivity])
    label = labels.flat[index]
    return labels == label if label else np.zeros_like(mask, dtype=bool)


def largest_component(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """The largest connected component of ``mask``; ties go to the first in raster order."""
    labels, n = ndimage.label(mask, structure=CONNECTIVITY[connectivity])
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    return labels == np.argmax(np.bincount(labels.flat)[1:]) + 1


def patch_box(component: np.ndarray, patch: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """[x1, y1, x2, y2] in image pixels of a patch component: its extent × the patch, the end
    exclusive, clipped to the image (as LOST's and TokenCut's ``detect_box``)."""
    rows, cols = np.nonzero(component)
    h, w = image_hw
    return np.array([cols.min() * patch, rows.min() * patch, min((cols.max() + 1) * patch, w),
                     min((rows.max() + 1) * patch, h)], dtype=np.float64)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2] (end exclusive) of a mask's foreground at its pixels; the whole mask when it is
    empty."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return np.array([0, 0, mask.shape[1], mask.shape[0]], dtype=np.float64)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def upsampled(patch_mask: np.ndarray, patch: int, image_hw: Tuple[int, int]) -> np.ndarray:
    """A patch mask at the pixels of a padded or cropped grid: each patch repeated, cut to the image,
    zeros where the grid does not reach (a cropped grid's last rows and columns)."""
    h, w = image_hw
    full = np.zeros((max(h, patch_mask.shape[0] * patch), max(w, patch_mask.shape[1] * patch)), np.float32)
    grid = np.kron(patch_mask.astype(np.float32), np.ones((patch, patch), np.float32))
    full[: grid.shape[0], : grid.shape[1]] = grid
    return full[:h, :w]


def nearest_to(patch_mask: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
    """A patch mask nearest-upsampled to ``image_hw`` (``F.interpolate(mode="nearest")``, as TokenCut
    maps a mask of its resized image back to the original)."""
    t = torch.from_numpy(patch_mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=tuple(image_hw), mode="nearest")[0, 0].numpy()
