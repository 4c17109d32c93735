"""The tricks registry: ``crop`` (a training loss), ``gf`` and ``bf`` (post-processing).

Grids and configs name tricks; ``build_postprocess`` and the trainer look them up here, so an
unknown name fails with the list of registered ones. A trick's stage decides what changing it
costs: a ``post`` trick is a pure function of (mask, image) and never needs retraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch

from segtricks.bilateral_solver import bilateral_solver_filter
from segtricks.crop_consistency import crop_consistency_terms
from segtricks.guided_filter import guided_filter
from segtricks.registry import Registry

TRICKS = Registry(
    "trick",
    contract="a Trick; stage 'train': the trainer adds its loss terms; stage 'post': "
    "apply(mask (B,1,H,W) in [0,1], image (B,3,H,W) in [0,1], cfg) -> mask of the same shape",
)


@dataclass(frozen=True)
class Trick:
    name: str
    stage: str  # "train" or "post"
    apply: Callable
    doc: str


def register_trick(name: str, stage: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        TRICKS.register(name)(Trick(name, stage, fn, (fn.__doc__ or "").strip()))
        return fn

    return deco


# Multi-scale crop consistency (SPEC §4): the trainer calls it with the model and the batch.
register_trick("crop", "train")(crop_consistency_terms)


@register_trick("gf", "post")
def gf_trick(mask: torch.Tensor, image: torch.Tensor, cfg) -> torch.Tensor:
    """Guided filter, radius ``gf.radius``, eps ``gf.eps``, guide = mean RGB."""
    return guided_filter(mask, image, cfg.gf.radius, cfg.gf.eps).clamp(0, 1)


@register_trick("bf", "post")
def bf_trick(mask: torch.Tensor, image: torch.Tensor, cfg) -> torch.Tensor:
    """Fast bilateral solver with ``bf.*`` parameters (σ 16/16/8, λ 256, 25 CG iterations)."""
    b = cfg.bf
    return bilateral_solver_filter(mask, image, sigma_spatial=b.sigma_spatial, sigma_luma=b.sigma_luma,
                                   sigma_chroma=b.sigma_chroma, lam=b.lam, cg_iterations=b.cg_iterations)


def get_tricks(names: Sequence[str]) -> List[Trick]:
    """Look up tricks by name, in order; unknown names list the registered ones."""
    return [TRICKS.get(n) for n in names]


def post_trick_names(names: Sequence[str]) -> List[str]:
    """The post-processing tricks among ``names``, in order (those that never need retraining)."""
    return [t.name for t in get_tricks(names) if t.stage == "post"]


def postprocess(mask: torch.Tensor, image: torch.Tensor, names: Sequence[str], cfg) -> torch.Tensor:
    """Apply the config's post-processing tricks in the order they are listed."""
    for trick in get_tricks(names):
        if trick.stage == "post":
            mask = trick.apply(mask, image, cfg)
    return mask
