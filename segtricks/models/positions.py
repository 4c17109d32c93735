"""How a ViT's pretrained grid of absolute positional embeddings meets another grid, by whose code.

``POSITION_RULES``: DINO's (which iBOT, LOST, TokenCut, FOUND and DINOv2 share), SelfMask's copy of it, and
DINOv2's with registers (a size, with antialiasing).
DINOv3 has no absolute embeddings (RoPE, inside attention: ``backbones.RopeKeyBackbone``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _side(pos_embed: torch.Tensor, prefix: int) -> int:
    """The side of the pretrained square grid of ``pos_embed`` (1, prefix + side², C)."""
    return math.isqrt(pos_embed.shape[1] - prefix)


def _resampled(pos_embed: torch.Tensor, prefix: int, rows: int, cols: int, **interpolation) -> torch.Tensor:
    """``pos_embed`` with its square grid resized to rows × cols by bicubic ``F.interpolate`` (align_corners
    off; ``interpolation`` gives the size or scale factor, and antialias), in float32 as DINOv2 computes it,
    the ``prefix`` entries kept in front."""
    side = _side(pos_embed, prefix)
    grid = pos_embed[:, prefix:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, mode="bicubic", align_corners=False, **interpolation)
    assert grid.shape[-2:] == (rows, cols), (grid.shape, rows, cols)
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :prefix], grid], dim=1)


def dino_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, prefix: int = 1) -> torch.Tensor:
    """The positional embeddings (1, 1 + rows·cols, C) of a rows × cols patch grid, as DINO's
    ``VisionTransformer.interpolate_pos_encoding`` computes them (facebookresearch/dino,
    ``vision_transformer.py``; iBOT, LOST, TokenCut, FOUND and SelfMask copy it): the pretrained
    square grid of side √N as is when the image is square with N patches; otherwise bicubic
    ``F.interpolate`` (align_corners off, no antialias) with ``scale_factor`` (rows + 0.1)/√N,
    (cols + 0.1)/√N. The 0.1 keeps the output size from rounding down (DINO issue #8); since the
    scale factor, not the size, sets where it samples, the embeddings differ from a resampling to
    the size (timm's ``resample_abs_pos_embed``) by up to 4e-2 on pretrained-like fields, enough to
    flip TokenCut's thresholded affinities. DINOv2's hub models without registers compute the same
    (``interpolate_offset=0.1``, ``interpolate_antialias=False``, in float32); those with registers do not
    (``dinov2_registers_pos_embed``). ``pos_embed`` is
    (1, prefix + N, C) with the ``prefix`` entries (CLS; none in timm's DINOv2 with registers) first."""
    side = _side(pos_embed, prefix)
    if rows * cols == side * side and rows == cols:
        return pos_embed
    return _resampled(pos_embed, prefix, rows, cols, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side))


def selfmask_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, prefix: int = 1) -> torch.Tensor:
    """The positional embeddings of a rows × cols grid as SelfMask's copy of DINO's ViT computes them
    (NoelShin/selfmask ``networks/vision_transformer.py::interpolate_pos_encoding``): as is whenever the
    grid has N patches, square or not (a quirk: a 14 × 56 grid reads the 28 × 28 embeddings in raster
    order); otherwise bicubic to exactly (rows, cols) (``size=``, no 0.1 offset, align_corners off)."""
    if rows * cols == pos_embed.shape[1] - prefix:
        return pos_embed
    return _resampled(pos_embed, prefix, rows, cols, size=(rows, cols))


def dinov2_registers_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int, prefix: int = 1) -> torch.Tensor:
    """The positional embeddings of a rows × cols grid as DINOv2's hub models *with registers* compute them
    (facebookresearch/dinov2 ``hub/backbones.py``: ``interpolate_antialias=True, interpolate_offset=0.0``):
    as is for a square grid of N patches, otherwise bicubic to exactly (rows, cols) **with antialiasing**,
    which smooths the 37 × 37 field whenever the grid is smaller (every input under 518²)."""
    side = _side(pos_embed, prefix)
    if rows * cols == side * side and rows == cols:
        return pos_embed
    return _resampled(pos_embed, prefix, rows, cols, size=(rows, cols), antialias=True)


# A backbone's positional rule: how its pretrained grid of embeddings meets another grid, by whose code
POSITION_RULES = {"dino": dino_pos_embed, "selfmask": selfmask_pos_embed,
                  "dinov2_registers": dinov2_registers_pos_embed}
