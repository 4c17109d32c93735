"""Self-supervised ViT backbones that return last-block attention keys as a feature map (frozen; SelfMask
fine-tunes its own and reads the last tokens instead).

Registered names (``BACKBONES.names()``): ``dino_vits8``, ``dino_vits16``, ``ibot_vits16`` (the
paper's three, on timm's ViT-S) and ``demo_vit4`` (a 2-block, 96-wide ViT/4 that is always randomly
initialised: the weight-free backbone for tests and the CPU demo).

Weights are resolved in this order (``resolve_weights_file``):
1. an explicit path (``backbone.weights`` in the config);
2. ``$SEGTRICKS_WEIGHTS/<official file name>``;
3. the torch.hub cache, downloading the official release there when online (not when
   ``$SEGTRICKS_OFFLINE=1``);
4. otherwise one error naming the file, where it is published and where to put it.
``weights: random-init`` skips all of this, and ``official-or-random-init`` (the rehearsal grid's) takes
steps 2–3 without downloading, else random-init; every backbone carries ``weights_id`` (``sha256:<hex>``
of the file, or ``random-init``) so that each training records what it stood on.

Positional embeddings meet other grid sizes by their authors' rule (``POSITION_RULES``: DINO's, and
SelfMask's copy of it). Over 400 lines on purpose: weights resolution, checkpoint loading, those rules
and the backbone class are one concern (what a backbone's features are, and from which file); each
registered backbone is a few lines.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

from segtricks.errors import BadInput, SegtricksWarning
from segtricks.registry import Registry

BACKBONES = Registry(
    "backbone",
    contract="fn(weights: str | None) -> KeyBackbone; weights is a file path, 'random-init', or None "
    "(resolve the official release). Registered with its architecture (patch, dim: the keys' width, depth: "
    "blocks) as literal attributes, readable without building it (tests check them against the built one)",
)

RANDOM_INIT = "random-init"
# A rehearsal's weights: the official release when this machine has it, else random-init (never a download)
OFFICIAL_OR_RANDOM = "official-or-random-init"
RANDOM_INIT_SEED = 0
# ImageNet statistics: every backbone here was pretrained on ImageNet-normalised input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(BadInput, FileNotFoundError):
    """The weights file is not on this machine and could not be downloaded."""


class CheckpointMismatchError(BadInput, ValueError):
    """A checkpoint that does not fit the backbone's architecture."""


@dataclass(frozen=True)
class WeightsRelease:
    """Where a backbone's official weights are published and what the file is called."""

    file_name: str  # relative to $SEGTRICKS_WEIGHTS
    url: str
    cache_name: str  # file name in the torch.hub cache (iBOT's own name is not unique)


DINO_S8 = WeightsRelease(
    "dino_deitsmall8_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    "dino_deitsmall8_pretrain.pth",
)
DINO_S16 = WeightsRelease(
    "dino_deitsmall16_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_deitsmall16_pretrain.pth",
)
IBOT_S16 = WeightsRelease(
    "ibot_vits16/checkpoint_teacher.pth",
    "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vits_16/"
    "checkpoint_teacher.pth",
    "ibot_vits16_checkpoint_teacher.pth",
)


# Each registered backbone's official release (None: no official weights, random-init by default).
RELEASES: Dict[str, Optional[WeightsRelease]] = {
    "dino_vits8": DINO_S8, "dino_vits16": DINO_S16, "ibot_vits16": IBOT_S16, "demo_vit4": None,
}


def find_weights(name: str, weights: Optional[str], download: bool = True) -> Optional[Path]:
    """The file backbone ``name`` loads for config value ``weights`` (None for random-init), found
    (or downloaded) as building it would, without building it: the check that runs before a grid.
    Raises ``WeightsNotFoundError`` naming the file, where it is published and where to put it.
    ``download=False`` (a dry run, which must reach no network): an official release that building
    would download is returned as the cache path it would be downloaded to, which does not exist."""
    release = RELEASES.get(name)
    if weights == RANDOM_INIT or release is None and weights in (None, OFFICIAL_OR_RANDOM):
        return None
    if weights == OFFICIAL_OR_RANDOM:
        try:
            path = resolve_weights_file(release, None, download=False)
        except WeightsNotFoundError:
            return None
        return path if path.is_file() else None
    return resolve_weights_file(release, weights, download)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights_file(release: Optional[WeightsRelease], explicit: Optional[str], download: bool = True) -> Path:
    """Find (or download) the weights file, in the order given in the module docstring.

    ``release`` may be None only with an explicit path (a backbone with no official weights)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {path} does not exist (set backbone.weights to an existing checkpoint, "
                f"or to '{RANDOM_INIT}' for an untrained backbone)"
            )
        return path
    assert release is not None, "a backbone without an official release needs an explicit path"
    weights_dir = os.environ.get("SEGTRICKS_WEIGHTS")
    if weights_dir and (Path(weights_dir) / release.file_name).is_file():
        return Path(weights_dir) / release.file_name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / release.cache_name
    if cached.is_file():
        return cached
    reason = "downloads are disabled ($SEGTRICKS_OFFLINE=1)"
    if os.environ.get("SEGTRICKS_OFFLINE", "") not in ("1", "true", "yes"):
        if not download:
            return cached
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(release.url, str(cached), progress=True)
            return cached
        except Exception as exc:  # no network, proxy, HTTP error: all end in the same advice
            reason = f"download failed: {exc}"
    where = f"$SEGTRICKS_WEIGHTS/{release.file_name}" if not weights_dir else (
        f"{Path(weights_dir) / release.file_name}")
    raise WeightsNotFoundError(
        f"backbone weights {release.file_name!r} not found ({reason}). Download it from {release.url} "
        f"and put it at {where} (set $SEGTRICKS_WEIGHTS to the folder), or pass its path as "
        f"backbone.weights, or use backbone.weights={RANDOM_INIT} for an untrained backbone."
    )


def _unwrap_state_dict(obj: object, path: Path) -> Dict[str, torch.Tensor]:
    """Find the tensors in a checkpoint saved by DINO, iBOT or a DDP training script."""
    while isinstance(obj, dict):
        for key in ("state_dict", "teacher", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path} holds no state dict of tensors")
    cleaned: Dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        changed = True
        while changed:  # strip 'module.backbone.' as well as either prefix alone
            changed = False
            for prefix in ("module.", "backbone."):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def load_vit_checkpoint(vit: nn.Module, path: Path, name: str) -> None:
    """Load a checkpoint into ``vit``; every backbone parameter must be matched with its shape."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # full training checkpoints pickle their argparse namespace
        warnings.warn(f"{path} is not a plain tensor checkpoint ({exc}); loading it with pickle", SegtricksWarning)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = _unwrap_state_dict(obj, path)
    own = vit.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointMismatchError(
            f"{path} does not fit backbone {name!r}: {len(missing)} of {len(own)} parameters are "
            f"missing from it (first: {', '.join(missing[:4])}); checkpoint keys start with "
            f"{', '.join(list(state)[:4])}. Is it a checkpoint of another architecture?"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k != "pos_embed" and state[k].shape != v.shape]
    if wrong:
        raise CheckpointMismatchError(
            f"{path} does not fit backbone {name!r}: shape mismatch in {len(wrong)} parameters "
            f"(checkpoint vs model: {'; '.join(wrong[:3])}). Is it a checkpoint of another architecture?"
        )
    pos = state["pos_embed"]
    if pos.shape != own["pos_embed"].shape:  # trained at another resolution: resample the grid
        from timm.layers import resample_abs_pos_embed

        grid = int(round((own["pos_embed"].shape[1] - vit.num_prefix_tokens) ** 0.5))
        pos = resample_abs_pos_embed(pos, [grid, grid], num_prefix_tokens=vit.num_prefix_tokens)
    vit.load_state_dict({**{k: state[k] for k in own}, "pos_embed": pos}, strict=True)


def dino_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The positional embeddings (1, 1 + rows·cols, C) of a rows × cols patch grid, as DINO's
    ``VisionTransformer.interpolate_pos_encoding`` computes them (facebookresearch/dino,
    ``vision_transformer.py``; iBOT, LOST, TokenCut, FOUND and SelfMask copy it): the pretrained
    square grid of side √N as is when the image is square with N patches; otherwise bicubic
    ``F.interpolate`` (align_corners off, no antialias) with ``scale_factor`` (rows + 0.1)/√N,
    (cols + 0.1)/√N. The 0.1 keeps the output size from rounding down (DINO issue #8); since the
    scale factor, not the size, sets where it samples, the embeddings differ from a resampling to
    the size (timm's ``resample_abs_pos_embed``) by up to 4e-2 on pretrained-like fields, enough to
    flip TokenCut's thresholded affinities. ``pos_embed`` is (1, 1 + N, C) with the CLS entry first."""
    n = pos_embed.shape[1] - 1
    if rows * cols == n and rows == cols:
        return pos_embed
    side = math.sqrt(n)
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
    assert grid.shape[-2:] == (rows, cols), (grid.shape, rows, cols)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


def selfmask_pos_embed(pos_embed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The positional embeddings of a rows × cols grid as SelfMask's copy of DINO's ViT computes them
    (NoelShin/selfmask ``networks/vision_transformer.py::interpolate_pos_encoding``): as is whenever the
    grid has N patches, square or not (a quirk: a 14 × 56 grid reads the 28 × 28 embeddings in raster
    order); otherwise bicubic to exactly (rows, cols) (``size=``, no 0.1 offset, align_corners off)."""
    n = pos_embed.shape[1] - 1
    if rows * cols == n:
        return pos_embed
    side = int(math.sqrt(n))
    grid = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


# A backbone's positional rule: how its pretrained grid of embeddings meets another grid, by whose code
POSITION_RULES = {"dino": dino_pos_embed, "selfmask": selfmask_pos_embed}


class KeyBackbone(nn.Module):
    """A frozen ViT whose output is the keys of its last attention block, CLS dropped.

    ``forward(x)`` takes an ImageNet-normalised batch (B, 3, H, W) with H and W divisible by
    ``patch_size`` and returns (B, embed_dim, H/p, W/p). Positional embeddings are interpolated to
    the input size by the rule of the backbone's authors (``positions``; ``"dino"``: DINO's
    ``interpolate_pos_encoding``, ``dino_pos_embed``; a method whose code differs sets its own,
    ``use_positions``), so that the keys are those of their own code at every size. ``features`` names what the keys depend on beyond the weights (the positional rule):
    the evaluation caches key on it. The ViT stays in eval mode, frozen unless a method fine-tunes it
    (``fine_tune``: SelfMask's encoder).
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
        q and k: softmax(q·kᵀ / √head_dim) over all tokens, CLS included, then the CLS entry dropped."""
        b, _, h, w = x.shape
        p = self.patch_size
        vit = self.vit
        tokens = self._tokens_before_last_block(x)
        last = vit.blocks[-1]
        qkv = last.attn.qkv(last.norm1(tokens))  # (B, N, 3·C), laid out (3, heads, head_dim)
        n, c, prefix = qkv.shape[1], self.embed_dim, vit.num_prefix_tokens
        all_keys = qkv.reshape(b, n, 3, c)[:, :, 1]
        cls_attention = None
        if attention:
            heads = last.attn.num_heads
            q_cls = qkv.reshape(b, n, 3, heads, c // heads)[:, 0, 0]  # (B, heads, head_dim)
            k = all_keys.reshape(b, n, heads, c // heads)
            logits = torch.einsum("bhd,bnhd->bhn", q_cls.float(), k.float()) * (c // heads) ** -0.5
            cls_attention = logits.softmax(dim=-1)[:, :, prefix:]
        keys = all_keys[:, prefix:]
        if self.rms is not None:  # scale only: cosine affinities are unchanged
            keys = keys * (self.rms * torch.rsqrt(keys.pow(2).mean(-1, keepdim=True) + 1e-12))
        return keys.transpose(1, 2).reshape(b, c, h // p, w // p), cls_attention


    def last_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H/p, W/p): the last block's output tokens after the ViT's final norm, CLS dropped (what
        DINO's ``forward`` normalises; SelfMask's decoder reads them). Differentiable when the ViT is
        fine-tuned (``fine_tune``)."""
        b, _, h, w = x.shape
        tokens = self.vit.norm(self.vit.blocks[-1](self._tokens_before_last_block(x)))
        grid = tokens[:, self.vit.num_prefix_tokens:]
        return grid.transpose(1, 2).reshape(b, self.embed_dim, h // self.patch_size, w // self.patch_size)

    def use_positions(self, rule: str) -> "KeyBackbone":
        """Interpolate positional embeddings by ``POSITION_RULES[rule]`` (SelfMask's model reads its
        ViT by its own code's rule)."""
        if rule not in POSITION_RULES:
            raise ValueError(f"unknown positional rule {rule!r}; known: {', '.join(POSITION_RULES)}")
        self.positions = rule
        self.features = f"last-block keys, positions {rule}"
        return self

    def fine_tune(self) -> "KeyBackbone":
        """Let the ViT's weights train (SelfMask fine-tunes its encoder); still in eval mode: the ViTs
        here have no dropout or drop-path, so the mode changes nothing."""
        for param in self.vit.parameters():
            param.requires_grad_(True)
        return self

    def _tokens_before_last_block(self, x: torch.Tensor) -> torch.Tensor:
        """(B, prefix + H/p · W/p, C): the tokens entering the last block, positions by ``positions``."""
        b, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}×{w} is not divisible by the patch size {p} of backbone {self.name!r}; "
                f"choose data.image_size as a multiple of {p}"
            )
        vit = self.vit
        patches = vit.patch_embed(x)  # (B, H/p, W/p, C): timm's dynamic_img_size keeps the grid
        rows, cols = patches.shape[1:3]
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), patches.reshape(b, rows * cols, -1)], dim=1)
        tokens = vit.norm_pre(vit.pos_drop(tokens + POSITION_RULES[self.positions](vit.pos_embed, rows, cols)))
        for block in vit.blocks[:-1]:
            tokens = block(tokens)
        return tokens


def _build(timm_name: str, name: str, weights: Optional[str], rms: Optional[float] = None,
           **timm_kwargs) -> KeyBackbone:
    # A random-init backbone is drawn from its own fixed seed, never the global RNG, so that
    # "random-init" names one set of weights: a run reloaded later gets the backbone it trained on.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        vit = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                **timm_kwargs)
    path = find_weights(name, weights)
    if path is None:
        return KeyBackbone(vit, name, RANDOM_INIT, rms)
    load_vit_checkpoint(vit, path, name)
    return KeyBackbone(vit, name, f"sha256:{sha256_of(path)}", rms)


@BACKBONES.register(patch=8, dim=384, depth=12)
def dino_vits8(weights: Optional[str] = None) -> KeyBackbone:
    """DINO ViT-S/8 (384-d, 12 blocks, 6 heads); official file ``dino_deitsmall8_pretrain.pth``."""
    return _build("vit_small_patch8_224", "dino_vits8", weights)


@BACKBONES.register(patch=16, dim=384, depth=12)
def dino_vits16(weights: Optional[str] = None) -> KeyBackbone:
    """DINO ViT-S/16; official file ``dino_deitsmall16_pretrain.pth``."""
    return _build("vit_small_patch16_224", "dino_vits16", weights)


@BACKBONES.register(patch=16, dim=384, depth=12)
def ibot_vits16(weights: Optional[str] = None) -> KeyBackbone:
    """iBOT ViT-S/16; official ``checkpoint_teacher.pth`` (weights under ``state_dict``)."""
    return _build("vit_small_patch16_224", "ibot_vits16", weights)


@BACKBONES.register(patch=4, dim=96, depth=2)
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


def build_backbone(name: str, weights: Optional[str] = None) -> KeyBackbone:
    """Build a registered backbone; an unknown name lists the registered ones."""
    return BACKBONES.get(name)(weights=weights)


def write_random_release(name: str, folder: Path) -> Path:
    """Write backbone ``name``'s random-init ViT as ``folder/<official file name>``, in the official
    release's layout: DINO's plain state dict of the ViT's keys; iBOT's ``state_dict`` holding the
    teacher's ``backbone.``-prefixed keys beside its projection head. A rehearsal (``benchmarks/
    rehearsal.yaml``) then loads weights the way a real run does, from ``$SEGTRICKS_WEIGHTS``."""
    release = RELEASES[name]
    if release is None:
        raise ValueError(f"backbone {name!r} has no official release to imitate")
    vit = build_backbone(name, RANDOM_INIT).vit
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    if release is IBOT_S16:
        teacher = {f"backbone.{k}": v for k, v in state.items()}
        teacher["head.last_layer.weight_g"] = torch.ones(8192, 1)  # iBOT's head: not the backbone's, ignored
        state = {"state_dict": teacher}
    path = Path(folder) / release.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
