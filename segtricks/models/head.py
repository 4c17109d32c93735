"""The Sempart segmentation head (docs/method.md#the-head): coarse mask on the patch grid, fine mask at full size.

Trainable on top of frozen backbone keys. For ViT-S/8 at 320×320 the coarse mask is 40×40; the fine
branch upsamples ⌈log2(patch)⌉ times, concatenating the ImageNet-normalised image at each scale: by 2 at
each stage but the last, which resizes to the input size. For a patch that is a power of two (the paper's
8 and 16) that last stage is a ×2 as well, and the head is the paper's; for DINOv2's 14 it is ×1.75 (four
stages, ×2 ×2 ×2 ×1.75), so the head has the same layers, hence parameters, as for 16 and never computes
at a size it must then shrink. Parameters (``SempartHead(384, p)``): 748,165 for p = 8; 899,461 for
p = 14 and 16 (``tests/test_head.py``).
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention: qkv without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def conv_bn_act(c_in: int, c_out: int) -> nn.Sequential:
    # In-place LeakyReLU: its backward reads the block's output (positive where its input was, the
    # slope being positive: the same numbers), so where the next conv saves that output too (the last
    # stage's, read by the second block) BatchNorm's full-resolution output is not kept beside it.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.01, inplace=True))


class SempartHead(nn.Module):
    """Coarse + fine mask head.

    ``forward(features, image)``: features (B, in_dim, h, w) from the backbone, image (B, 3, h·p, w·p)
    ImageNet-normalised. Returns ``{"coarse": (B,1,h,w), "fine": (B,1,h·p,w·p)}``, both sigmoids.
    ``fine_grad=False`` computes the fine mask without a graph (same values, BatchNorm statistics
    updated as ever), for callers that only read it detached: the full-resolution branch is then
    not kept for backward.
    """

    def __init__(self, in_dim: int, patch_size: int, dim: int = 64, depth: int = 2, heads: int = 2,
                 head_dim: int = 64, mlp_dim: int = 64) -> None:
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"patch size {patch_size}: the head upsamples from a patch grid of at least 2 pixels")
        stages = math.ceil(math.log2(patch_size))
        self.proj = nn.Conv2d(in_dim, dim, 1)
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, head_dim, mlp_dim) for _ in range(depth))
        self.coarse = nn.Conv2d(dim, 1, 1)
        widths = [192] + [128] * (stages - 1)  # /8: 64→192→128→128; /16: one more 128 stage
        c_in = dim
        self.up = nn.ModuleList()
        for c_out in widths:
            self.up.append(conv_bn_act(c_in + 3, c_out))
            c_in = c_out
        # The last stage has a second conv block at full resolution, for every patch size (docs/method.md, the head:
        # "the final upsampling block comprises two convolutional blocks").
        self.refine = conv_bn_act(c_in, c_in)
        self.fine = nn.Conv2d(c_in + 3, 1, 1)

    def forward(self, features: torch.Tensor, image: torch.Tensor,
                fine_grad: bool = True) -> Dict[str, torch.Tensor]:
        x = self.proj(features)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # no positional encoding: the keys carry position
        for layer in self.encoder:
            tokens = layer(tokens)
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        coarse = torch.sigmoid(self.coarse(x))
        # The image joins each concatenation in the activations' dtype: under bf16 autocast torch.cat
        # would promote the whole concatenation to float32, which the conv then rounds back to bf16.
        with torch.set_grad_enabled(fine_grad and torch.is_grad_enabled()):
            for i, stage in enumerate(self.up):
                last = i == len(self.up) - 1  # to the input size: ×2 for a power-of-two patch
                size = tuple(image.shape[-2:]) if last else (2 * x.shape[-2], 2 * x.shape[-1])
                guide = image if last else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
                # upsampled inside the concatenation, so the upsampled copy is freed before the conv (a
                # doubled size samples exactly as scale_factor=2: both give the kernel the scale 0.5)
                x = stage(torch.cat([F.interpolate(x, size=size, mode="bilinear", align_corners=False),
                                     guide.to(x.dtype)], dim=1))
            x = self.refine(x)
            fine = torch.sigmoid(self.fine(torch.cat([x, image.to(x.dtype)], dim=1)))
        return {"coarse": coarse, "fine": fine}
