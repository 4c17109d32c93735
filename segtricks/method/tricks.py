"""The tricks registry: ``crop`` (a training trick), ``gf`` and ``bf`` (post-processing tricks).

Configs and grids name tricks; the trainer and the evaluation look them up here, so an unknown name
fails with the list of registered ones. Two kinds, each with one contract:

- ``TrainingTrick`` (stage ``train``): ``extra_terms(step)`` returns the trick's unweighted loss terms
  for one batch (``step``: images, the model's outputs on them, ``predict`` to run the model on other
  images, the config and the tricks' random generator); ``loss_weights(cfg)`` their weights. The
  trainer adds the terms of every configured training trick without naming any.
- ``PostTrick`` (stage ``post``): ``apply(mask (B,1,H,W) in [0,1], image (B,3,H,W) in [0,1], cfg)``
  returns a mask of the same shape. A pure function of (mask, image): changing it never retrains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional, Sequence

import torch

from segtricks.method.bilateral_solver import bilateral_solver_filter
from segtricks.method.crop_consistency import crop_consistency_terms, sample_crop_boxes
from segtricks.method.guided_filter import guided_filter
from segtricks.registry import Registry

TRICKS = Registry(
    "trick",
    contract="a TrainingTrick (stage 'train': extra_terms(step) -> {term: loss}, loss_weights(cfg) -> "
    "{term: weight}) or a PostTrick (stage 'post': apply(mask (B,1,H,W) in [0,1], image (B,3,H,W) in "
    "[0,1], cfg) -> mask of the same shape)",
)


@dataclass
class TrainStep:
    """One training batch as a training trick sees it."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    outputs: Dict[str, torch.Tensor]  # the model's coarse, fine (with gradient) and features
    # the model on other [0, 1] images; predict(x, fine_grad=False): its fine mask without a graph
    predict: Callable[..., Dict[str, torch.Tensor]]
    cfg: object  # the Config
    generator: Optional[torch.Generator]  # reseeded every epoch, for resumable randomness


class TrainingTrick:
    """Base class of training tricks (see the module docstring for the contract)."""

    stage: ClassVar[str] = "train"
    name: str = ""

    @property
    def doc(self) -> str:
        return (type(self).__doc__ or "").strip()

    def extra_terms(self, step: TrainStep) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss_weights(self, cfg) -> Dict[str, float]:
        raise NotImplementedError


@dataclass(frozen=True)
class PostTrick:
    """A post-processing trick: ``apply(mask, image, cfg)`` (see the module docstring)."""

    name: str
    apply: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
    doc: str
    stage: ClassVar[str] = "post"


def register_post_trick(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        TRICKS.register(name)(PostTrick(name, fn, (fn.__doc__ or "").strip()))
        return fn

    return deco


class CropConsistency(TrainingTrick):
    """Multi-scale crop consistency (docs/method.md#crop-consistency): terms ``crop_ncut`` (weight ``crop.ncut_weight``) and
    ``crop_eq`` (λ = ``crop.eq_weight``) between the student's full-image mask, cropped, and the
    GF-sharpened, detached prediction on a random crop (``crop.frac`` of the side)."""

    name = "crop"

    def extra_terms(self, step: TrainStep) -> Dict[str, torch.Tensor]:
        c, images = step.cfg.crop, step.images
        boxes = sample_crop_boxes(images.shape[0], images.shape[-1], c.frac, step.generator)
        return crop_consistency_terms(step.predict, images, step.outputs["fine"], boxes, step.cfg.loss.tau,
                                      step.cfg.loss.eps, c.teacher_gf_radius, c.teacher_gf_eps)

    def loss_weights(self, cfg) -> Dict[str, float]:
        return {"crop_ncut": cfg.crop.ncut_weight, "crop_eq": cfg.crop.eq_weight}


TRICKS.register("crop", stage="train")(CropConsistency())


@register_post_trick("gf")
def gf_trick(mask: torch.Tensor, image: torch.Tensor, cfg) -> torch.Tensor:
    """Guided filter, radius ``gf.radius``, eps ``gf.eps``, guide = mean RGB."""
    return guided_filter(mask, image, cfg.gf.radius, cfg.gf.eps).clamp(0, 1)


@register_post_trick("bf")
def bf_trick(mask: torch.Tensor, image: torch.Tensor, cfg) -> torch.Tensor:
    """Fast bilateral solver with ``bf.*`` parameters (σ 16/16/8, λ 256, 25 CG iterations)."""
    b = cfg.bf
    return bilateral_solver_filter(mask, image, sigma_spatial=b.sigma_spatial, sigma_luma=b.sigma_luma,
                                   sigma_chroma=b.sigma_chroma, lam=b.lam, cg_iterations=b.cg_iterations)


def get_tricks(names: Sequence[str]) -> List:
    """Look up tricks by name, in order; unknown names list the registered ones."""
    return [TRICKS.get(n) for n in names]


def training_tricks(names: Sequence[str]) -> List[TrainingTrick]:
    """The training tricks among ``names``, in order."""
    return [t for t in get_tricks(names) if t.stage == "train"]


def post_trick_names(names: Sequence[str]) -> List[str]:
    """The post-processing tricks among ``names``, in order (those that never need retraining)."""
    return [t.name for t in get_tricks(names) if t.stage == "post"]


def postprocess(mask: torch.Tensor, image: torch.Tensor, names: Sequence[str], cfg) -> torch.Tensor:
    """Apply the config's post-processing tricks in the order they are listed."""
    for trick in get_tricks(names):
        if trick.stage == "post":
            mask = trick.apply(mask, image, cfg)
    return mask
