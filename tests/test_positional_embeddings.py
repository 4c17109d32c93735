"""The DINO-family backbones' keys equal those of DINO's own code at every input size (issue 33).

DINO's ``interpolate_pos_encoding`` resamples the positional grid by a scale factor of (side + 0.1)/√N,
not to a size as timm does; the two differ by up to 4e-2 on a pretrained-like field, which flips
thresholded affinities (TokenCut's, LOST's degrees). The reference keys in ``tests/data/dino_keys.npz``
were computed by DINO's public ``vision_transformer.py`` (facebookresearch/dino at 7c446df, run once
outside this repository: its ``vit_small(patch_size=p)`` loaded with ``dino_layout_checkpoint``, the
last block's keys read from a hook on ``blocks[-1].attn.qkv`` as LOST reads them, CLS dropped), each
projected on ``PROJECTION`` to keep the file small (220 KB), and at ``ATTENTION_SIZES`` the CLS row of
``get_last_selfattention`` (FOUND's input). The checkpoint and the images are drawn
from this file's own generators, not from timm's initialisation, which may change between versions.
"""
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from segtricks.models.backbones import build_backbone
from segtricks.models.positions import dino_pos_embed

REFERENCE = Path(__file__).parent / "data" / "dino_keys.npz"
SIZES = [(224, 224), (320, 320), (320, 480), (480, 320), (336, 496)]  # (H, W)
ATTENTION_SIZES = [(224, 224), (320, 480)]  # where the CLS attention is kept too (FOUND reads it)
PATCH = {"dino_vits8": 8, "dino_vits16": 16, "ibot_vits16": 16}


def dino_layout_checkpoint(patch: int) -> Dict[str, torch.Tensor]:
    """A ViT-S/``patch`` state dict in DINO's layout: every weight N(0, 0.02²), biases N(0, 0.01²),
    LayerNorm scales 1 + N(0, 0.1²), and a smooth positional field of std ≈ 0.3 over the pretrained
    14×14 (or 28×28) grid, as a pretrained one is smooth and a random-init one is noise."""
    g = torch.Generator().manual_seed(33 + patch)
    dim, side, hidden = 384, 224 // patch, 1536
    shapes = {"cls_token": (1, 1, dim), "patch_embed.proj.weight": (dim, 3, patch, patch),
              "patch_embed.proj.bias": (dim,), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(12):
        shapes.update({f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
                       f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
                       f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
                       f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
                       f"blocks.{i}.mlp.fc1.weight": (hidden, dim), f"blocks.{i}.mlp.fc1.bias": (hidden,),
                       f"blocks.{i}.mlp.fc2.weight": (dim, hidden), f"blocks.{i}.mlp.fc2.bias": (dim,)})
    state = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        if "norm" in name and name.endswith("weight"):
            state[name] = 1 + 0.1 * noise
        else:
            state[name] = (0.01 if name.endswith("bias") else 0.02) * noise
    freqs = torch.rand(2, dim, generator=g) * 1.5  # cycles across the grid, per channel
    phase = torch.rand(dim, generator=g) * 6.2832
    y, x = torch.meshgrid(torch.arange(side) / side, torch.arange(side) / side, indexing="ij")
    field = 0.42 * torch.sin(6.2832 * (freqs[0] * y[..., None] + freqs[1] * x[..., None]) + phase)
    state["pos_embed"] = torch.cat([0.02 * torch.randn(1, 1, dim, generator=g), field.reshape(1, side * side, dim)], 1)
    return state


def image(h: int, w: int) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


PROJECTION = torch.randn(384, 3, generator=torch.Generator().manual_seed(7)) / 384 ** 0.5


def checkpoint_file(name: str, folder: Path) -> Path:
    """``dino_layout_checkpoint`` in the backbone's release layout (iBOT's: prefixed, under ``state_dict``)."""
    state = dino_layout_checkpoint(PATCH[name])
    if name.startswith("ibot"):
        state = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}}
    path = folder / f"{name}.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", sorted(PATCH))
def test_keys_equal_dinos_own_at_every_size(name, tmp_path):
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE} is missing")
    reference = np.load(REFERENCE)
    backbone = build_backbone(name, str(checkpoint_file(name, tmp_path)))
    p = PATCH[name]
    for h, w in SIZES:
        with torch.no_grad():
            keys = backbone(image(h, w))  # (1, 384, h/p, w/p)
        ours = (keys[0].flatten(1).T @ PROJECTION).numpy()
        theirs = reference[f"s{p}_{h}x{w}"]
        assert ours.shape == theirs.shape == ((h // p) * (w // p), 3)
        assert np.abs(ours - theirs).max() < 1e-5, (name, h, w, np.abs(ours - theirs).max())


@pytest.mark.parametrize("name", ["dino_vits8", "dino_vits16"])
def test_cls_attention_equals_dinos_get_last_selfattention(name, tmp_path):
    """``keys_and_attention``'s CLS attention is the row ``get_last_selfattention(x)[0, :, 0, 1:]`` of DINO's
    code, and its keys are ``forward``'s."""
    reference = np.load(REFERENCE)
    backbone = build_backbone(name, str(checkpoint_file(name, tmp_path)))
    p = PATCH[name]
    for h, w in ATTENTION_SIZES:
        with torch.no_grad():
            keys, attention = backbone.keys_and_attention(image(h, w))
            assert torch.equal(keys, backbone(image(h, w)))
        theirs = reference[f"attention_s{p}_{h}x{w}"]
        assert attention.shape == (1, 6, (h // p) * (w // p)) == (1, *theirs.shape)
        assert np.abs(attention[0].numpy() - theirs).max() < 1e-6 * theirs.max() * 10


def test_the_check_would_fail_on_a_resampling_to_the_size(tmp_path):
    """timm's ``resample_abs_pos_embed`` (what the backbones did before) is off by far more than the
    tolerance at every size but the pretrained one."""
    from timm.layers import resample_abs_pos_embed
    pos = dino_layout_checkpoint(16)["pos_embed"]
    assert torch.equal(dino_pos_embed(pos, 14, 14), pos)
    for h, w in SIZES[1:]:
        timm_pos = resample_abs_pos_embed(pos, new_size=(h // 16, w // 16), old_size=(14, 14), num_prefix_tokens=1)
        ours = dino_pos_embed(pos, h // 16, w // 16)
        assert ours.shape == timm_pos.shape and (ours - timm_pos).abs().max() > 1e-2
