"""What a training-free method is: ``Method`` and its output. The registry is ``segtricks.methods.registry``.

A method is built from a config and a frozen backbone, and predicts one image at a time at its own
size, as its authors run it:

    method = build_method(cfg, device)
    out = method.predict(image, task)     # image (3, H, W) in [0, 1] on the device; task "saliency" or "boxes"
    out.mask                              # (H, W) float32 in [0, 1] at the image's size (binary for these)
    out.box                               # [x1, y1, x2, y2] in image pixels: the box CorLoc scores

``task`` is ``boxes`` for a dataset with ground-truth boxes and no masks (VOC, COCO: the authors'
CorLoc preprocessing, usually zero-padding to the patch) and ``saliency`` otherwise (their saliency
preprocessing). The post-processing tricks (GF, BF) apply to any method's mask, at the image's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segtricks.config.schema import Config
from segtricks.models.backbones import IMAGENET_MEAN, IMAGENET_STD, KeyBackbone

TASKS = ("saliency", "boxes")


@dataclass
class MethodOutput:
    mask: np.ndarray  # (H, W) float32 in [0, 1] at the image's size
    box: np.ndarray  # (4,) [x1, y1, x2, y2] in image pixels, the end exclusive


class Method:
    """A method on a frozen backbone; subclasses implement ``predict``. The backbone runs in float32
    on every device: the methods threshold affinities of its keys, and their authors computed them in
    float32 (bf16 keys flip entries near the threshold)."""

    def __init__(self, cfg: Config, backbone: KeyBackbone) -> None:
        self.cfg, self.backbone = cfg, backbone
        self.patch = backbone.patch_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean.to(image.device)) / self.std.to(image.device)

    @torch.no_grad()
    def keys(self, normalised: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 keys of one normalised image whose sides are multiples of the patch, patches
        in row-major order (CLS dropped)."""
        return self.backbone(normalised[None].float())[0].flatten(1).T.float()

    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        raise NotImplementedError
