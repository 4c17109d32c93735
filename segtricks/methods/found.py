"""FOUND (Siméoni et al., CVPR 2023), as its code computes it (valeoai/FOUND at 1ad22ba): a 1×1
convolution on frozen keys, trained 500 iterations against a background found without training.

1. Background (``bkg_seg.py::compute_img_bkg_seg``; ``background_masks``): the last block's CLS
   attention of each head on the patches; each head weighted by its sparsity (CroW): with the
   threshold the mean attention over all heads and patches, Q_h the fraction of patches above it,
   β_h = log(Σ_h (Q_h + ε) / (Q_h + ε)). The keys (CLS dropped, not normalised) of each head scaled by
   β_h, then L2-normalised; the seed is the patch of least Σ_h β_h·attention; the background is
   every patch whose cosine with the seed is above ``found.bkg_threshold`` (0.3).
2. Training (``main_found_train.py``; ``FoundRecipe``): the decoder ``Conv2d(C, 1, 1)`` on the keys,
   BCE-with-logits against three targets at the patch grid:
   - ``bs`` (weight ``found.bs_weight`` 1.5, always): the model's own prediction (σ > 0.5) refined by
     the bilateral solver (``refined_by_bilateral_solver``);
   - ``bkg`` (weight 1, the first ``found.stop_bkg_loss`` = 100 steps): the inverted background,
     refined the same way;
   - ``self`` (weight ``found.self_weight`` 4, after them): the model's own prediction, not refined.
   AdamW at ``optim.lr`` 5e-2 (weight decay 0.01), the rate × ``found.lr_gamma`` (0.95) every
   ``found.lr_step`` (50) steps; batch 50 of 224² images (``data.views.FoundTrainView``); 501 steps
   (the authors' loop stops after the step it numbers 500), as 3 epochs of 167 steps.
3. Evaluation (``evaluation/saliency.py``, ``evaluation/uod.py``; ``Found``): the full image,
   normalised and zero-padded to the patch; logits bilinearly upsampled × patch (align_corners off),
   cut to the image, σ > 0.5. ``found.mode: single`` (the paper's "FOUND - single") keeps the largest
   4-connected foreground component; ``multi`` scores the sigmoid map. CorLoc: the largest
   4-connected component of the patch-level σ > 0.5, its box × the patch, clipped.

The bilateral solver inside training is FOUND's: the mask resized to the image (OpenCV bilinear), the
image as the 8-bit picture ``ToPILImage`` makes of it (values truncated, not rounded), σ 16/16/8,
λ 256, 25 CG iterations; the output > 0.5 with holes filled, then every 4-connected region but the
single largest (``get_all_cc``: normally the background; if the foreground is larger, it is the
foreground that goes), kept only when its IoU with the input is above ``found.bs_iou`` (0.5), then
bilinearly downsampled to the patch grid where any non-zero value counts (``.bool()``).
"""
from __future__ import annotations

from typing import Dict, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from segtricks.config.schema import Config
from segtricks.data.datasets import RawDataset
from segtricks.data.views import FoundTrainView
from segtricks.method.bilateral_solver import bilateral_solve
from segtricks.methods.base import MethodOutput, TrainedMethod, TrainingRecipe
from segtricks.methods.patches import CONNECTIVITY, largest_component, pad_to_patches, patch_box
from segtricks.models.backbones import IMAGENET_MEAN, IMAGENET_STD, KeyBackbone

EPSILON = 1e-10  # compute_img_bkg_seg's default


def background_masks(attention: torch.Tensor, keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, N) bool, True on the background: ``compute_img_bkg_seg`` on the CLS attention (B, heads, N)
    and the keys (B, N, C) of a batch (patches in row-major order, CLS dropped)."""
    b, heads, n = attention.shape
    att = attention.float()
    mean = att.reshape(b, -1).mean(dim=1)
    q = (att > mean[:, None, None]).sum(dim=2) / n
    beta = torch.log((q + EPSILON).sum(dim=1, keepdim=True) / (q + EPSILON))  # (B, heads)
    descriptors = (keys.float().reshape(b, n, heads, -1) * beta[:, None, :, None]).reshape(b, n, -1)
    descriptors = F.normalize(descriptors, dim=-1, p=2)
    seed = torch.argmin((att * beta[:, :, None]).sum(dim=1), dim=-1)  # (B,)
    cosine = torch.einsum("bc,bnc->bn", descriptors[torch.arange(b, device=seed.device), seed], descriptors)
    return cosine > threshold


def all_but_largest_region(binary: np.ndarray) -> np.ndarray:
    """``get_all_cc``: every 4-connected region of ``binary`` and of its complement's label 0, but the one
    with most pixels (the order ``np.argsort`` gives the pixel counts, as the authors sort them)."""
    labels, n = ndimage.label(binary, structure=CONNECTIVITY[4])
    largest = np.argsort(np.bincount(labels.ravel(), minlength=n + 1))[-1]
    return labels != largest


def solver_image(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] → the values ``ToPILImage`` gives the solver: ⌊255·x⌋ (``mul(255).byte()``)."""
    return (image.detach().float().cpu() * 255).to(torch.uint8).float()


def refined_by_bilateral_solver(masks: torch.Tensor, images: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """FOUND's ``batch_apply_bilateral_solver(get_all_cc=True)``: each (h, w) mask of ``masks`` (B, h, w)
    refined by the solver at its image's size (images (B, 3, H, W) in [0, 1]) where the refinement keeps
    IoU > ``iou_threshold`` with it, else the mask itself. (B, h, w) float 0/1 on the masks' device."""
    out = []
    for mask, image in zip(masks, images):
        h, w = image.shape[-2:]
        resized = cv2.resize(mask.detach().float().cpu().numpy(), (w, h))  # OpenCV's bilinear, as the authors
        soft = bilateral_solve(torch.from_numpy(resized).double(), solver_image(image), sigma_spatial=16,
                               sigma_luma=16, sigma_chroma=8, lam=256, cg_iterations=25).numpy()
        refined = all_but_largest_region(ndimage.binary_fill_holes(soft > 0.5))
        before = resized > 0.5
        union = (before | refined).sum()
        if union and (before & refined).sum() / union > iou_threshold:
            down = F.interpolate(torch.from_numpy(refined.astype(np.float32))[None, None], size=mask.shape,
                                 mode="bilinear", align_corners=False)[0, 0]
            out.append((down != 0).float().to(masks.device))  # .bool(): any non-zero value is foreground
        else:
            out.append(mask.float())
    return torch.stack(out)


class FoundModel(nn.Module):
    """Frozen backbone + FOUND's decoder ``Conv2d(C, 1, 1)`` (``head``), taking [0, 1] images.

    ``forward(images)`` → ``logits`` (B,1,h,w), ``coarse`` = σ(logits), ``fine`` = σ of the logits
    upsampled × patch (bilinear), ``features`` (the keys) and ``attention`` (the CLS row, FOUND's
    background input). The backbone runs in float32 under any autocast: the background mask
    thresholds cosines of its keys, as the authors computed them."""

    def __init__(self, backbone: KeyBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.embed_dim, 1, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, features: Optional[torch.Tensor] = None,
                fine_grad: bool = True) -> Dict[str, torch.Tensor]:
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            keys, attention = self.backbone.keys_and_attention(((images - self.mean) / self.std).float())
        logits = self.head(keys)
        fine = torch.sigmoid(F.interpolate(logits, scale_factor=self.backbone.patch_size, mode="bilinear",
                                           align_corners=False))
        return {"logits": logits, "coarse": torch.sigmoid(logits), "fine": fine, "features": keys,
                "attention": attention}


class FoundRecipe(TrainingRecipe):
    """FOUND's training (module docstring, step 2)."""

    def build_model(self, cfg: Config) -> FoundModel:
        return FoundModel(self.training_backbone(cfg))

    def train_view(self, cfg: Config, raw: RawDataset) -> FoundTrainView:
        return FoundTrainView(raw, cfg.data.image_size, cfg.found.scale_range, cfg.data.train.on_error)

    def loss_terms(self, model: FoundModel, images: torch.Tensor, out: Dict[str, torch.Tensor], cfg: Config,
                   step: int, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        fc = cfg.found
        logits = out["logits"].float()
        predicted = (torch.sigmoid(logits.detach()) > 0.5).float()  # (B, 1, h, w)
        terms = {"bs": F.binary_cross_entropy_with_logits(
            logits, refined_by_bilateral_solver(predicted[:, 0], images, fc.bs_iou)[:, None])}
        if step < fc.stop_bkg_loss:
            keys = out["features"].flatten(2).transpose(1, 2)
            foreground = ~background_masks(out["attention"], keys, fc.bkg_threshold)
            foreground = foreground.reshape(logits.shape[0], *logits.shape[-2:]).float()
            terms["bkg"] = F.binary_cross_entropy_with_logits(
                logits, refined_by_bilateral_solver(foreground, images, fc.bs_iou)[:, None])
        else:
            terms["self"] = F.binary_cross_entropy_with_logits(logits, predicted)
        return terms

    def loss_weights(self, cfg: Config) -> Dict[str, float]:
        return {"bs": cfg.found.bs_weight, "bkg": 1.0, "self": cfg.found.self_weight}

    def lr_factor(self, cfg: Config, step: int, steps_per_epoch: Optional[int] = None) -> float:
        return cfg.found.lr_gamma ** (step // cfg.found.lr_step)  # StepLR, stepped every iteration

    def as_method(self, cfg: Config, model: FoundModel) -> "Found":
        return Found(cfg, model)


def largest_foreground(binary: np.ndarray) -> np.ndarray:
    """``single`` mode: the 4-connected foreground component with most pixels, the last of
    ``np.argsort`` of the pixel counts once the background's label is removed, as the authors pick it;
    an empty map stays empty."""
    labels, n = ndimage.label(binary, structure=CONNECTIVITY[4])
    if n == 0:
        return binary.astype(bool)
    order = np.argsort([np.sum(labels == i) for i in range(n + 1)])
    return labels == order[order != 0][-1]


class Found(TrainedMethod):
    """A trained FOUND model (``FoundRecipe``) as a method: module docstring, step 3."""

    @torch.no_grad()
    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        h, w = image.shape[-2:]
        x = pad_to_patches(self.normalise(image), self.patch)
        logits = self.model.head(self.backbone(x[None].float()).float())  # (1, 1, h/p, w/p)
        up = F.interpolate(logits, scale_factor=self.patch, mode="bilinear", align_corners=False)[0, 0, :h, :w]
        soft = torch.sigmoid(up).cpu().numpy()
        if self.cfg.found.mode == "single":
            mask = largest_foreground(soft > 0.5).astype(np.float32)
        else:
            mask = soft.astype(np.float32)
        patches = (torch.sigmoid(logits[0, 0]) > 0.5).cpu().numpy()
        if not patches.any():  # the authors' box code fails on an empty map: the whole image
            return MethodOutput(mask, np.array([0, 0, w, h], dtype=np.float64))
        return MethodOutput(mask, patch_box(largest_component(patches, 4), self.patch, (h, w)))
