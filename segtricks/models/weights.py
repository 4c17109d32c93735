"""Where a backbone's weights come from and how a checkpoint file becomes timm's parameters.

Weights are resolved in this order (``resolve_weights_file``):
1. an explicit path (``backbone.weights`` in the config);
2. ``$SEGTRICKS_WEIGHTS/<official file name>``;
3. the torch.hub cache, downloading the official release there when online (not when
   ``$SEGTRICKS_OFFLINE=1``, and never a release whose download is gated by a licence form: DINOv3's);
4. otherwise one error naming the file, where it is published and where to put it.
``weights: random-init`` skips all of this, and ``official-or-random-init`` (the rehearsal grid's) takes
steps 2–3 without downloading, else random-init; every backbone carries ``weights_id`` (``sha256:<hex>``
of the file, or ``random-init``) so that each training records what it stood on.

A release's ``layout`` names how its file spells the ViT (``LAYOUTS``): DINO's and iBOT's are timm's own
keys; DINOv2's and DINOv3's are converted (registers, layer scales, DINOv3's masked key bias), and
``write_layout`` writes the other way, so that a rehearsal loads a random-init file in the official layout.
Loading is strict: every parameter of the timm model must come from the file with its shape.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn

from segtricks.errors import BadInput, SegtricksWarning

RANDOM_INIT = "random-init"
# A rehearsal's weights: the official release when this machine has it, else random-init (never a download)
OFFICIAL_OR_RANDOM = "official-or-random-init"


class WeightsNotFoundError(BadInput, FileNotFoundError):
    """The weights file is not on this machine and could not be downloaded."""


class CheckpointMismatchError(BadInput, ValueError):
    """A checkpoint that does not fit the backbone's architecture."""


@dataclass(frozen=True)
class WeightsRelease:
    """Where a backbone's official weights are published, what the file is called, its layout and licence."""

    file_name: str  # relative to $SEGTRICKS_WEIGHTS
    url: str  # the file itself, or (gated) the page where its download is asked for
    cache_name: str  # file name in the torch.hub cache (iBOT's own name is not unique)
    layout: str = "timm"  # LAYOUTS key: how the file spells the ViT's parameters
    licence: str = ""
    gated: bool = False  # the download needs a licence form: never attempted


DINO_S8 = WeightsRelease(
    "dino_deitsmall8_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
    "dino_deitsmall8_pretrain.pth", licence="Apache-2.0",
)
DINO_S16 = WeightsRelease(
    "dino_deitsmall16_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    "dino_deitsmall16_pretrain.pth", licence="Apache-2.0",
)
IBOT_S16 = WeightsRelease(
    "ibot_vits16/checkpoint_teacher.pth",
    "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vits_16/"
    "checkpoint_teacher.pth",
    "ibot_vits16_checkpoint_teacher.pth", licence="Apache-2.0",
)
DINO_B8 = WeightsRelease(
    "dino_vitbase8_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    "dino_vitbase8_pretrain.pth", licence="Apache-2.0",
)
DINO_B16 = WeightsRelease(
    "dino_vitbase16_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dino_vitbase16_pretrain.pth", licence="Apache-2.0",
)
DINOV2_S14 = WeightsRelease(
    "dinov2_vits14_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    "dinov2_vits14_pretrain.pth", layout="dinov2", licence="Apache-2.0",
)
DINOV2_S14_REG = WeightsRelease(
    "dinov2_vits14_reg4_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
    "dinov2_vits14_reg4_pretrain.pth", layout="dinov2", licence="Apache-2.0",
)
# DINOv3's files are served by signed links sent after a licence form (facebookresearch/dinov3 README).
DINOV3_S16 = WeightsRelease(
    "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/",
    "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", layout="dinov3", licence="DINOv3 License", gated=True,
)


# Each registered backbone's official release (None: no official weights, random-init by default).
RELEASES: Dict[str, Optional[WeightsRelease]] = {
    "dino_vits8": DINO_S8, "dino_vits16": DINO_S16, "ibot_vits16": IBOT_S16, "demo_vit4": None,
    "dinov2_vits14": DINOV2_S14, "dinov2_vits14_reg": DINOV2_S14_REG, "dinov3_vits16": DINOV3_S16,
    "dino_vitb8": DINO_B8, "dino_vitb16": DINO_B16,
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
    if release.gated:
        reason = "its download is gated by a licence form"
    elif os.environ.get("SEGTRICKS_OFFLINE", "") not in ("1", "true", "yes"):
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
    source = (f"Ask for it at {release.url} ({release.licence}), download it from the link you are sent"
              if release.gated else f"Download it from {release.url}")
    raise WeightsNotFoundError(
        f"backbone weights {release.file_name!r} not found ({reason}). {source} "
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


def load_vit_checkpoint(vit: nn.Module, path: Path, name: str, layout: str = "timm") -> None:
    """Load a checkpoint in ``layout`` (``LAYOUTS``) into ``vit``; every parameter must be matched with its
    shape (extra entries in the file, a projection head's, are ignored)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # full training checkpoints pickle their argparse namespace
        warnings.warn(f"{path} is not a plain tensor checkpoint ({exc}); loading it with pickle", SegtricksWarning)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = LAYOUTS[layout].read(_unwrap_state_dict(obj, path), vit, path)
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
    state = {k: state[k] for k in own}
    if "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        # trained at another resolution: resample the grid
        from timm.layers import resample_abs_pos_embed

        prefix = position_prefix(vit)
        grid = int(round((own["pos_embed"].shape[1] - prefix) ** 0.5))
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [grid, grid], num_prefix_tokens=prefix)
    vit.load_state_dict(state, strict=True)


def position_prefix(vit: nn.Module) -> int:
    """How many prefix tokens (CLS, registers) have an entry in ``vit.pos_embed``: none in timm's DINOv2
    with registers (``no_embed_class``), CLS alone otherwise."""
    return 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens


@dataclass(frozen=True)
class Layout:
    """How a release's file spells the ViT: ``read`` turns its state dict into timm's parameter names
    (raising ``CheckpointMismatchError`` on what timm's model cannot hold), ``write`` does the inverse."""

    read: Callable[[Dict[str, torch.Tensor], nn.Module, Path], Dict[str, torch.Tensor]]
    write: Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]


def _read_dinov2(state: Dict[str, torch.Tensor], vit: nn.Module, path: Path) -> Dict[str, torch.Tensor]:
    """facebookresearch/dinov2 ``vision_transformer.py``: the same names as timm's, plus ``mask_token``
    (pretraining only). With registers, timm gives CLS and registers no positional entry
    (``no_embed_class``): DINOv2 adds ``pos_embed[:, 0]`` to CLS only, which timm's CLS token holds."""
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        pos = state.pop("pos_embed")
        state.update(reg_token=state.pop("register_tokens"), cls_token=state["cls_token"] + pos[:, :1],
                     pos_embed=pos[:, 1:])
    return state


def _write_dinov2(state: Dict[str, torch.Tensor], vit: nn.Module) -> Dict[str, torch.Tensor]:
    out = dict(state, mask_token=torch.zeros(1, vit.embed_dim))
    if "reg_token" in out:  # CLS's positional entry written as zeros: the CLS token already holds it
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([torch.zeros(1, 1, vit.embed_dim), out["pos_embed"]], dim=1)
    return out


def _read_dinov3(state: Dict[str, torch.Tensor], vit: nn.Module, path: Path) -> Dict[str, torch.Tensor]:
    """facebookresearch/dinov3 ``vision_transformer.py`` → timm's ``Eva``: ``storage_tokens`` are timm's
    registers, ``ls1/ls2.gamma`` its ``gamma_1/2``; the qkv bias is applied times ``bias_mask``
    (``LinearKMaskedBias``: the key third is masked to 0), which timm holds as q and v biases (its key bias
    is a zero buffer, so a file whose masked key bias is not zero is refused). The RoPE periods are
    recomputed by timm (base 100): a file whose periods differ is refused. ``mask_token`` is pretraining only."""
    out = {}
    for key, value in state.items():
        if key == "mask_token" or key.endswith(".bias_mask"):
            continue
        if key == "rope_embed.periods":
            if not torch.allclose(value.float(), vit.rope.periods.float(), rtol=1e-6):
                raise CheckpointMismatchError(f"{path} has RoPE periods {value.tolist()[:3]}…, not the base-100 "
                                              f"periods of DINOv3 ViT-S/16; is it another DINOv3 model?")
            continue
        if key.endswith("attn.qkv.bias"):
            mask = state.get(key + "_mask", torch.ones_like(value))
            q, k, v = (value * mask).chunk(3)
            if bool(k.any()):
                raise CheckpointMismatchError(f"{path}: {key} has a non-zero key bias after its mask, which "
                                              f"DINOv3's ViT-S/16 (mask_k_bias) never has")
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q, v
            continue
        key = key.replace("storage_tokens", "reg_token").replace(".ls1.gamma", ".gamma_1")
        out[key.replace(".ls2.gamma", ".gamma_2")] = value
    return out


def _write_dinov3(state: Dict[str, torch.Tensor], vit: nn.Module) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {"mask_token": torch.zeros(1, vit.embed_dim),
                                    "rope_embed.periods": vit.rope.periods.clone()}
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            qkv = key.replace("q_bias", "qkv.bias")
            out[qkv] = torch.cat([value, torch.zeros_like(value), state[key.replace("q_bias", "v_bias")]])
            out[qkv + "_mask"] = torch.cat([torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)])
        elif not key.endswith("attn.v_bias"):
            key = key.replace("reg_token", "storage_tokens").replace(".gamma_1", ".ls1.gamma")
            out[key.replace(".gamma_2", ".ls2.gamma")] = value
    return out


LAYOUTS: Dict[str, Layout] = {
    "timm": Layout(lambda state, vit, path: state, lambda state, vit: dict(state)),  # DINO, iBOT: timm's names
    "dinov2": Layout(_read_dinov2, _write_dinov2),
    "dinov3": Layout(_read_dinov3, _write_dinov3),
}
