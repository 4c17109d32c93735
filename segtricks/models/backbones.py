"""Self-supervised ViT backbones that return last-block attention keys as a feature map (frozen; SelfMask
fine-tunes its own and reads the last tokens instead).

Registered names (``BACKBONES.names()``): the paper's three, ``dino_vits8``, ``dino_vits16``,
``ibot_vits16``; beyond the paper ``dino_vitb8``, ``dino_vitb16`` (768-d keys), ``dinov2_vits14``,
``dinov2_vits14_reg`` (4 registers) and ``dinov3_vits16`` (RoPE, 4 registers); and ``demo_vit4`` (a
2-block, 96-wide ViT/4 that is always randomly initialised: the weight-free backbone for tests and the CPU
demo). Each is timm's architecture, registered
with its patch, width, depth, registers and whether it rotates keys (RoPE); its official file, layout and
licence are in ``weights.RELEASES``.

Every method reads the same features: the last block's keys of the patch tokens, CLS and registers dropped.
Absolute positional embeddings meet other grid sizes by their authors' rule (``positions``). DINOv3 rotates
queries and keys by RoPE inside attention: its keys are taken before the rotation by default (``rope_keys``),
so that an affinity between two patches (TokenCut's, LOST's) depends on what they show, not where they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import apply_rot_embed_cat

from segtricks.config.schema import ROPE_KEYS
from segtricks.models.positions import POSITION_RULES
from segtricks.models.weights import (LAYOUTS, RANDOM_INIT, RELEASES, find_weights, load_vit_checkpoint,
                                      position_prefix, sha256_of)
from segtricks.registry import Registry

BACKBONES = Registry(
    "backbone",
    contract="fn(weights: str | None) -> KeyBackbone; weights is a file path, 'random-init', or None "
    "(resolve the official release). Registered with its architecture (patch, dim: the keys' width, depth: "
    "blocks, registers: register tokens, rope: keys rotated by RoPE) as literal attributes, readable without "
    "building it (tests check them against the built one)",
)

RANDOM_INIT_SEED = 0
# ImageNet statistics: every backbone here was pretrained on ImageNet-normalised input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class KeyBackbone(nn.Module):
    """A frozen ViT with absolute positional embeddings whose output is the keys of its last attention
    block, CLS and registers dropped.

    ``forward(x)`` takes an ImageNet-normalised batch (B, 3, H, W) with H and W divisible by
    ``patch_size`` and returns (B, embed_dim, H/p, W/p). Positional embeddings are interpolated to
    the input size by the rule of the backbone's authors (``positions``; ``"dino"``: DINO's
    ``interpolate_pos_encoding``, ``dino_pos_embed``; a method whose code differs sets its own,
    ``use_positions``), so that the keys are those of their own code at every size. ``features`` names
    what the keys depend on beyond the weights (the positional rule, or where RoPE keys are read): the
    evaluation caches key on it.
    The ViT stays in eval mode, frozen unless a method fine-tunes it (``fine_tune``: SelfMask's encoder).
    """

    def __init__(self, vit: nn.Module, name: str, weights_id: str, rms: Optional[float] = None,
                 positions: str = "dino") -> None:
        super().__init__()
        self.vit = vit
        self.rms = rms  # rescale each token's keys to this RMS (None: keys as they are)
        self.name = name
        self.weights_id = weights_id
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dim = vit.embed_dim
        self.use_positions(positions)
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.vit.eval()

    def train(self, mode: bool = True) -> "KeyBackbone":
        return super().train(False)  # frozen: no dropout/drop-path, whatever the caller asks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keys_and_attention(x, attention=False)[0]

    def keys_and_attention(self, x: torch.Tensor,
                           attention: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(keys (B, C, H/p, W/p), CLS attention (B, heads, H/p · W/p) or None): the keys ``forward``
        returns, and the last block's softmax attention of the CLS query on every patch (the row
        ``get_last_selfattention(x)[:, :, 0, 1:]`` of DINO's code, which FOUND reads), from the same
        q and k: softmax(q·kᵀ / √head_dim) over all tokens, CLS and registers included, then those dropped."""
        b, _, h, w = x.shape
        p, c, prefix = self.patch_size, self.embed_dim, self.vit.num_prefix_tokens
        tokens, rope = self._tokens_before_last_block(x)
        q, k_attended, keys = self._queries_and_keys(self.vit.blocks[-1], tokens, rope)
        cls_attention = None
        if attention:
            heads = self.vit.blocks[-1].attn.num_heads
            q_cls = q[:, 0].reshape(b, heads, c // heads)  # CLS is never rotated
            k = k_attended.reshape(b, -1, heads, c // heads)
            logits = torch.einsum("bhd,bnhd->bhn", q_cls.float(), k.float()) * (c // heads) ** -0.5
            cls_attention = logits.softmax(dim=-1)[:, :, prefix:]
        keys = keys[:, prefix:]
        if self.rms is not None:  # scale only: cosine affinities are unchanged
            keys = keys * (self.rms * torch.rsqrt(keys.pow(2).mean(-1, keepdim=True) + 1e-12))
        return keys.transpose(1, 2).reshape(b, c, h // p, w // p), cls_attention

    def last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H/p, W/p): the last block's output tokens after the ViT's final norm, CLS and registers
        dropped (what DINO's ``forward`` normalises; SelfMask's decoder reads them). Differentiable when the
        ViT is fine-tuned (``fine_tune``)."""
        b, _, h, w = x.shape
        tokens, rope = self._tokens_before_last_block(x)
        tokens = self.vit.norm(self._block(self.vit.blocks[-1], tokens, rope))
        grid = tokens[:, self.vit.num_prefix_tokens:]
        return grid.transpose(1, 2).reshape(b, self.embed_dim, h // self.patch_size, w // self.patch_size)

    @property
    def features(self) -> str:
        """What the keys depend on beyond the weights: the evaluation caches key on it."""
        return f"last-block keys, positions {self.positions}"

    def use_positions(self, rule: str) -> "KeyBackbone":
        """Interpolate positional embeddings by ``POSITION_RULES[rule]`` (SelfMask's model reads its
        ViT by its own code's rule); a RoPE backbone records it only (it has no absolute embeddings)."""
        if rule not in POSITION_RULES:
            raise ValueError(f"unknown positional rule {rule!r}; known: {', '.join(POSITION_RULES)}")
        self.positions = rule
        return self

    def fine_tune(self) -> "KeyBackbone":
        """Let the ViT's weights train (SelfMask fine-tunes its encoder); still in eval mode: the ViTs
        here have no dropout or drop-path, so the mode changes nothing."""
        for param in self.vit.parameters():
            param.requires_grad_(True)
        return self

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H/p, W/p, C): the patch embeddings, refusing a size the patch does not divide."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}×{w} is not divisible by the patch size {p} of backbone {self.name!r}; "
                f"choose data.image_size as a multiple of {p}"
            )
        return self.vit.patch_embed(x)  # timm's dynamic_img_size keeps the grid

    def _prefix(self, b: int) -> list:
        """The prefix tokens, in the order of the authors' code: CLS, then the registers."""
        vit = self.vit
        tokens = [vit.cls_token.expand(b, -1, -1)]
        if getattr(vit, "reg_token", None) is not None:
            tokens.append(vit.reg_token.expand(b, -1, -1))
        return tokens

    def _tokens_before_last_block(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, prefix + H/p · W/p, C): the tokens entering the last block; and the rotary embedding the
        blocks read (None for absolute positions)."""
        vit = self.vit
        patches = self._patches(x)
        b, rows, cols = patches.shape[:3]
        tokens, rope = self._with_positions(patches.reshape(b, rows * cols, -1), rows, cols)
        tokens = vit.norm_pre(vit.pos_drop(tokens))
        for block in vit.blocks[:-1]:
            tokens = self._block(block, tokens, rope)
        return tokens, rope

    def _with_positions(self, patches: torch.Tensor, rows: int, cols: int
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The prefix tokens and ``patches`` (B, rows · cols, C) with positions by ``positions``; no RoPE."""
        vit = self.vit
        prefix = self._prefix(patches.shape[0])
        pos = POSITION_RULES[self.positions](vit.pos_embed, rows, cols, prefix=position_prefix(vit))
        if position_prefix(vit):  # CLS has an entry: add after concatenating (DINO)
            return torch.cat(prefix + [patches], dim=1) + pos, None
        # DINOv2 with registers (timm's no_embed_class): CLS holds its entry, registers have none
        return torch.cat(prefix + [patches + pos], dim=1), None

    @staticmethod
    def _block(block: nn.Module, tokens: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
        return block(tokens)

    def _queries_and_keys(self, block: nn.Module, tokens: torch.Tensor, rope: Optional[torch.Tensor]
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, features), each (B, N, C): ``block``'s queries and keys as its attention uses them, and the
        keys read as features (the same keys here)."""
        qkv = block.attn.qkv(block.norm1(tokens))  # (B, N, 3·C), laid out (3, heads, head_dim)
        b, n, c = tokens.shape
        qkv = qkv.reshape(b, n, 3, c)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 1]


class RopeKeyBackbone(KeyBackbone):
    """A ViT whose positions are rotary (DINOv3, timm's ``Eva``): no absolute embeddings; each block rotates
    the patch tokens' queries and keys (CLS and registers are not rotated) by the grid's RoPE.

    ``rope_keys`` says which keys are the features: ``"before"`` (the default) the rotation, the content of
    the token alone, or ``"after"`` it, as the attention compares them. The CLS attention FOUND reads is the
    attention's own, from rotated keys, either way."""

    def __init__(self, vit: nn.Module, name: str, weights_id: str, rms: Optional[float] = None,
                 positions: str = "dino") -> None:
        super().__init__(vit, name, weights_id, rms, positions)
        self.use_rope_keys(ROPE_KEYS[0])

    @property
    def features(self) -> str:
        return f"last-block keys {self.rope_keys} RoPE"

    def use_rope_keys(self, where: str) -> "RopeKeyBackbone":
        if where not in ROPE_KEYS:
            raise ValueError(f"rope_keys must be one of {', '.join(ROPE_KEYS)}, not {where!r}")
        self.rope_keys = where
        return self

    def _with_positions(self, patches: torch.Tensor, rows: int, cols: int
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The prefix tokens and ``patches``, unchanged; the grid's rotary embedding, which the blocks apply."""
        tokens = torch.cat(self._prefix(patches.shape[0]) + [patches], dim=1)
        return tokens, self.vit.rope.get_embed(shape=(rows, cols))

    @staticmethod
    def _block(block: nn.Module, tokens: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
        return block(tokens, rope=rope)

    def _queries_and_keys(self, block: nn.Module, tokens: torch.Tensor, rope: Optional[torch.Tensor]
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = block.attn
        b, n, c = tokens.shape
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))  # the key bias is a zero buffer
        qkv = F.linear(block.norm1(tokens), attn.qkv.weight, bias)
        q, k = qkv.reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)[:2]
        prefix = self.vit.num_prefix_tokens
        rotated = [torch.cat([t[:, :, :prefix], apply_rot_embed_cat(t[:, :, prefix:], rope, half=True)], dim=2)
                   for t in (q, k)]
        q, k, k_rot = (t.transpose(1, 2).reshape(b, n, c) for t in (rotated[0], k, rotated[1]))
        return q, k_rot, k_rot if self.rope_keys == "after" else k


def _build(timm_name: str, name: str, weights: Optional[str], rms: Optional[float] = None,
           kind: type = KeyBackbone, positions: str = "dino", **timm_kwargs) -> KeyBackbone:
    # A random-init backbone is drawn from its own fixed seed, never the global RNG, so that
    # "random-init" names one set of weights: a run reloaded later gets the backbone it trained on.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        vit = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                **timm_kwargs)
    path = find_weights(name, weights)
    if path is None:
        weights_id = RANDOM_INIT
    else:
        release = RELEASES.get(name)
        load_vit_checkpoint(vit, path, name, release.layout if release else "timm")
        weights_id = f"sha256:{sha256_of(path)}"
    return kind(vit, name, weights_id, rms, positions)


@BACKBONES.register(patch=8, dim=384, depth=12, registers=0, rope=False)
def dino_vits8(weights: Optional[str] = None) -> KeyBackbone:
    """DINO ViT-S/8 (384-d, 12 blocks, 6 heads); official file ``dino_deitsmall8_pretrain.pth``."""
    return _build("vit_small_patch8_224", "dino_vits8", weights)


@BACKBONES.register(patch=16, dim=384, depth=12, registers=0, rope=False)
def dino_vits16(weights: Optional[str] = None) -> KeyBackbone:
    """DINO ViT-S/16; official file ``dino_deitsmall16_pretrain.pth``."""
    return _build("vit_small_patch16_224", "dino_vits16", weights)


@BACKBONES.register(patch=16, dim=384, depth=12, registers=0, rope=False)
def ibot_vits16(weights: Optional[str] = None) -> KeyBackbone:
    """iBOT ViT-S/16; official ``checkpoint_teacher.pth`` (weights under ``state_dict``)."""
    return _build("vit_small_patch16_224", "ibot_vits16", weights)


@BACKBONES.register(patch=4, dim=96, depth=2, registers=0, rope=False)
def demo_vit4(weights: Optional[str] = None) -> KeyBackbone:
    """A 2-block, 96-wide ViT/4 for tests and the CPU demo; random-init unless given a file.

    Patch 4 gives a 16×16 token grid at 64 px, so small objects span whole patches while the
    head's full-resolution convolutions stay cheap enough for a CPU. Its keys are rescaled to RMS 4
    per token (a scale only: cosine affinities, hence NCut and coarse graph-TV, are unchanged), because
    random-init keys (timm's qkv init, std 0.02) have RMS ≈ 0.2, which leaves the head's first layer
    nearly constant. With the old L1 graph-TV that collapsed the mask; with the reference's squared
    graph-TV it no longer does, but the rescaled keys still learn faster and end higher. Measured on
    the demo cell as it was then (64², 4 epochs × 32 steps of 8; held-out test IoU, seeds 0 / 1;
    centred prior .238): baseline training, keys as they are .358 / .524, RMS 4 .493 / .530; crop + GF
    training, .436 / .502 vs .540 / .454; validation IoU after the first epoch ≈ .17 unscaled vs ≈ .34
    at RMS 4. The demo now trains at 56 px (14×14 tokens).
    """
    return _build("vit_small_patch8_224", "demo_vit4", weights, rms=4.0,
                  patch_size=4, embed_dim=96, depth=2, num_heads=3)


@BACKBONES.register(patch=8, dim=768, depth=12, registers=0, rope=False)
def dino_vitb8(weights: Optional[str] = None) -> KeyBackbone:
    """DINO ViT-B/8 (768-d keys, 12 heads); official file ``dino_vitbase8_pretrain.pth`` — beyond the paper."""
    return _build("vit_base_patch8_224", "dino_vitb8", weights)


@BACKBONES.register(patch=16, dim=768, depth=12, registers=0, rope=False)
def dino_vitb16(weights: Optional[str] = None) -> KeyBackbone:
    """DINO ViT-B/16; official file ``dino_vitbase16_pretrain.pth`` — beyond the paper."""
    return _build("vit_base_patch16_224", "dino_vitb16", weights)


@BACKBONES.register(patch=14, dim=384, depth=12, registers=0, rope=False)
def dinov2_vits14(weights: Optional[str] = None) -> KeyBackbone:
    """DINOv2 ViT-S/14 (LVD-142M; layer scale; pretrained at 518², a 37 × 37 grid); official file
    ``dinov2_vits14_pretrain.pth``; timm's ``vit_small_patch14_dinov2``."""
    return _build("vit_small_patch14_dinov2", "dinov2_vits14", weights)


@BACKBONES.register(patch=14, dim=384, depth=12, registers=4, rope=False)
def dinov2_vits14_reg(weights: Optional[str] = None) -> KeyBackbone:
    """DINOv2 ViT-S/14 with 4 register tokens; official file ``dinov2_vits14_reg4_pretrain.pth``; timm's
    ``vit_small_patch14_reg4_dinov2``. The registers enter after CLS with no positional embedding, and the
    positional grid is resized by DINOv2's rule for its register models (``dinov2_registers_pos_embed``)."""
    return _build("vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg", weights, positions="dinov2_registers")


@BACKBONES.register(patch=16, dim=384, depth=12, registers=4, rope=True)
def dinov3_vits16(weights: Optional[str] = None) -> KeyBackbone:
    """DINOv3 ViT-S/16 distilled (LVD-1689M; RoPE base 100, 4 storage tokens, layer scale); official file
    ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth`` (gated: DINOv3 License); timm's
    ``vit_small_patch16_dinov3_qkvb`` (the variant that holds the file's q and v biases exactly)."""
    return _build("vit_small_patch16_dinov3_qkvb", "dinov3_vits16", weights, kind=RopeKeyBackbone)


def build_backbone(name: str, weights: Optional[str] = None, rope_keys: Optional[str] = None) -> KeyBackbone:
    """Build a registered backbone; an unknown name lists the registered ones. ``rope_keys`` (a RoPE
    backbone only; None: its default) says where its keys are read (``RopeKeyBackbone``)."""
    backbone = BACKBONES.get(name)(weights=weights)
    if rope_keys is not None:
        if not isinstance(backbone, RopeKeyBackbone):
            raise ValueError(f"backbone {name!r} has no RoPE: backbone.rope_keys applies to "
                             f"{', '.join(n for n in BACKBONES.names() if BACKBONES.attributes(n)['rope'])}")
        backbone.use_rope_keys(rope_keys)
    return backbone


def write_random_release(name: str, folder: Path) -> Path:
    """Write backbone ``name``'s random-init ViT as ``folder/<official file name>``, in the official
    release's layout: DINO's plain state dict of the ViT's keys; iBOT's ``state_dict`` holding the
    teacher's ``backbone.``-prefixed keys beside its projection head; DINOv2's and DINOv3's names
    (``weights.LAYOUTS``). A rehearsal (``benchmarks/rehearsal.yaml``) then loads weights the way a real
    run does, from ``$SEGTRICKS_WEIGHTS``."""
    release = RELEASES[name]
    if release is None:
        raise ValueError(f"backbone {name!r} has no official release to imitate")
    vit = build_backbone(name, RANDOM_INIT).vit
    state = LAYOUTS[release.layout].write({k: v.clone() for k, v in vit.state_dict().items()}, vit)
    if name == "ibot_vits16":
        teacher = {f"backbone.{k}": v for k, v in state.items()}
        teacher["head.last_layer.weight_g"] = torch.ones(8192, 1)  # iBOT's head: not the backbone's, ignored
        state = {"state_dict": teacher}
    path = Path(folder) / release.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
