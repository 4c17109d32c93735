"""SelfMask (Shin, Albanie and Xie, 2022), as its code computes it (NoelShin/selfmask at 4c1cda2): a
salient-object network trained on one pseudo-mask per image. The paper's "SelfMask w/ X" rows train it
on the masks another method predicts for DUTS-TR; here on the masks of any dataset with masks (a
``folder`` of images and pseudo-masks).

1. Model (``networks/maskformer/maskformer.py``; ``SelfMaskModel``): the backbone ViT **fine-tuned**,
   its positional embeddings interpolated by SelfMask's own rule (``selfmask_pos_embed``: it differs
   from DINO's off the 224² training size, at evaluation); its last block's tokens after the final
   norm, CLS dropped, are the memory of a DETR decoder
   (post-norm layers: self-attention, cross-attention, a ReLU FFN of 4× the width; no dropout, no
   positional encoding on the memory) with ``selfmask.queries`` (20) learned query embeddings (N(0, 1))
   as the query positions and zeros as the first targets; each of its ``selfmask.decoder_layers`` (6)
   layers' outputs goes through the final LayerNorm. The masks of each layer are σ(query · token) on
   the tokens bilinearly upsampled × 2 (no MLP on the queries); each query's objectness is σ of a
   3-layer MLP (C → C → C → 1, ReLU).
2. Loss (``criterion.py``; ``selfmask_terms``): for each image whose pseudo-mask is not empty (the
   authors' collate drops the others) and each decoder layer, the masks bilinearly resized to the
   target's size and the Dice loss ``1 − (2Σpg + 1)/(Σp + Σg + 1)`` summed over the queries (no
   matching: there is one target); plus a ranking loss on the objectness; both summed over layers and
   divided by the images kept. ``selfmask.ranking``: see ``ranking_loss``.
3. Schedule (``utils/lr_scheduler.py::Poly``, ``trainer.py``; ``poly_factor``): AdamW at 6e-6, weight
   decay 0.01, batch 8, 12 epochs of 224² crops (``data.views.SelfMaskTrainView``), the rate ×
   (1 − T/total)^0.9 where the authors' T wraps every epoch and advances twice per step (their progress
   bar calls ``get_lr()`` again): the factor stays in [0.925, 1].
4. Inference (``evaluator.py``; ``SelfMask``): the image normalised and zero-padded to the patch, the
   last layer's query of highest objectness, its mask × 4 bilinearly (from the × 2 grid to the
   pixels: × patch/2 on a backbone of another patch), cut to the image, > 0.5.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segtricks.config.schema import Config
from segtricks.data.datasets import RawDataset
from segtricks.data.views import SelfMaskTrainView
from segtricks.methods.base import MethodOutput, TrainedMethod, TrainingRecipe
from segtricks.methods.patches import largest_component, mask_box, pad_to_patches
from segtricks.models.backbones import IMAGENET_MEAN, IMAGENET_STD, KeyBackbone

POLY_POWER = 0.9


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer (``TransformerDecoderLayer.forward_post``, dropout 0, ReLU);
    sequences first, (length, batch, C), as ``nn.MultiheadAttention`` takes them by default."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=0.0)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, target: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = target + query_pos
        target = self.norm1(target + self.self_attn(q, k, value=target, need_weights=False)[0])
        attended = self.multihead_attn(target + query_pos, memory, value=memory, need_weights=False)[0]
        target = self.norm2(target + attended)
        return self.norm3(target + self.linear2(F.relu(self.linear1(target))))


class Decoder(nn.Module):
    """The layers and the final LayerNorm; returns every layer's output through that norm (DETR's
    ``return_intermediate``), (layers, queries, batch, C)."""

    def __init__(self, dim: int, heads: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, target: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        outputs = []
        for layer in self.layers:
            target = layer(target, memory, query_pos)
            outputs.append(self.norm(target))
        return torch.stack(outputs)


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's ``MLP``)."""

    def __init__(self, dim: int, hidden: int, out: int, layers: int) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:] + [out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class SelfMaskHead(nn.Module):
    """Everything SelfMask trains: the decoder, the query embeddings, the objectness MLP and the
    fine-tuned encoder. The encoder is the backbone's own ViT, registered here too so that the
    optimiser, the checkpoint (``head``) and a logged model carry its fine-tuned weights; the names of
    the other parameters are the authors' (``decoder.*``, ``query_embed``, ``ffn.*``)."""

    def __init__(self, encoder: nn.Module, dim: int, heads: int, queries: int, layers: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = Decoder(dim, heads, 4 * dim, layers)
        self.query_embed = nn.Parameter(torch.randn(queries, dim))  # nn.Embedding's N(0, 1) init
        self.ffn = MLP(dim, dim, 1, 3)

    def forward(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """tokens (B, C, h, w) → ``masks`` (B, layers, queries, 2h, 2w) and ``objectness`` (B, layers,
        queries), both sigmoids."""
        b = tokens.shape[0]
        memory = tokens.flatten(2).permute(2, 0, 1)  # (h·w, B, C)
        query_pos = self.query_embed[:, None].expand(-1, b, -1)
        queries = self.decoder(torch.zeros_like(query_pos), memory, query_pos).permute(2, 0, 1, 3)  # (B, L, Q, C)
        features = F.interpolate(tokens, scale_factor=2, mode="bilinear", align_corners=False)
        masks = torch.sigmoid(torch.einsum("blqc,bchw->blqhw", queries, features))
        return {"masks": masks, "objectness": torch.sigmoid(self.ffn(queries))[..., 0]}


class SelfMaskModel(nn.Module):
    """Fine-tuned backbone + SelfMask's decoder, taking [0, 1] images whose sides are multiples of the
    patch (the training crops; ``SelfMask.predict`` pads any other image)."""

    def __init__(self, backbone: KeyBackbone, queries: int, layers: int) -> None:
        super().__init__()
        self.backbone = backbone.fine_tune().use_positions("selfmask")  # its ViT copy's interpolation
        heads = backbone.vit.blocks[-1].attn.num_heads
        self.head = SelfMaskHead(backbone.vit, backbone.embed_dim, heads, queries, layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, fine_grad: bool = True) -> Dict[str, torch.Tensor]:
        return self.head(self.backbone.last_tokens((images - self.mean) / self.std))


def dice_losses(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(Q,): ``1 − (2Σpg + 1)/(Σp + Σg + 1)`` of each mask of ``masks`` (Q, N) against ``target`` (N,)."""
    return 1 - (2 * masks @ target + 1) / (masks.sum(-1) + target.sum() + 1)


def ranking_loss(objectness: torch.Tensor, dice: torch.Tensor, rule: str) -> torch.Tensor:
    """Hinge without margin on the objectness (Q,) of queries ordered by their Dice losses (Q,): Σ over
    pairs (i before j in that order) of max(0, s_j − s_i).

    ``as_written`` orders them as the authors' code does, worst first (``argsort(dice,
    descending=True)``): it penalises a *better* query scoring above a worse one, which pushes the best
    query's objectness down, while inference picks the highest objectness. ``argmax`` (the default)
    orders them best first: it penalises a worse query scoring above a better one, consistent with
    that selection (docs/methods.md#selfmask)."""
    order = torch.argsort(dice.detach(), descending=rule == "as_written", stable=True)
    s = objectness[order][:, None]
    pairs = torch.triu(s - s.T, diagonal=1)
    return pairs[pairs < 0].abs().sum()


def selfmask_terms(masks: torch.Tensor, objectness: torch.Tensor, targets: torch.Tensor,
                   rule: str) -> Dict[str, torch.Tensor]:
    """``dice`` and ``ranking`` of a batch: masks (B, L, Q, h, w) and objectness (B, L, Q) against the
    binary targets (B, H, W); each summed over layers (and, for Dice, queries), divided by the images
    whose target is not empty (the others are left out, as the authors' collate drops them)."""
    dice = ranking = masks.sum() * 0  # zero terms with a graph when every target is empty
    kept = 0
    for image_masks, image_objectness, target in zip(masks.float(), objectness.float(), targets.float()):
        if not target.any():
            continue
        kept += 1
        resized = F.interpolate(image_masks, size=target.shape[-2:], mode="bilinear", align_corners=False)
        for layer_masks, layer_objectness in zip(resized.flatten(2), image_objectness):
            losses = dice_losses(layer_masks, target.flatten())
            dice = dice + losses.sum()
            ranking = ranking + ranking_loss(layer_objectness, losses, rule)
    kept = max(kept, 1)
    return {"dice": dice / kept, "ranking": ranking / kept}


def poly_factor(step: int, steps_per_epoch: int, epochs: int) -> float:
    """The rate factor of the authors' optimiser step ``step`` (0-based): ``Poly``'s (1 − T/total)^0.9
    with total = epochs × steps_per_epoch, where T is 0 at the first step and then ((2·step − 2) mod
    steps_per_epoch) + 1: their scheduler wraps T every epoch and is called twice per step."""
    t = 0 if step == 0 else (2 * step - 2) % steps_per_epoch + 1
    return (1 - t / (epochs * steps_per_epoch)) ** POLY_POWER


class SelfMaskRecipe(TrainingRecipe):
    """SelfMask's training (module docstring, steps 1-3) on the masks of ``data.train``."""

    def build_model(self, cfg: Config) -> SelfMaskModel:
        return SelfMaskModel(self.training_backbone(cfg), cfg.selfmask.queries, cfg.selfmask.decoder_layers)

    def train_view(self, cfg: Config, raw: RawDataset) -> SelfMaskTrainView:
        return SelfMaskTrainView(raw, cfg.data.image_size, cfg.selfmask.scale_range, cfg.data.train.on_error)

    def loss_terms(self, model: SelfMaskModel, images: torch.Tensor, out: Dict[str, torch.Tensor], cfg: Config,
                   step: int, targets: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if targets is None:
            raise ValueError("SelfMask trains on masks: its training batches are (images, masks)")
        return selfmask_terms(out["masks"], out["objectness"], targets, cfg.selfmask.ranking)

    def loss_weights(self, cfg: Config) -> Dict[str, float]:
        return {"dice": 1.0, "ranking": cfg.selfmask.ranking_weight}

    def lr_factor(self, cfg: Config, step: int, steps_per_epoch: Optional[int] = None) -> float:
        if steps_per_epoch is None:
            raise ValueError("SelfMask's schedule needs the epoch's length")
        return poly_factor(step, steps_per_epoch, cfg.optim.epochs)

    def as_method(self, cfg: Config, model: SelfMaskModel) -> "SelfMask":
        return SelfMask(cfg, model)


class SelfMask(TrainedMethod):
    """A trained SelfMask model as a method: module docstring, step 4. Its box (CorLoc) is the
    extent of the mask's largest 4-connected component (SelfMask reports no boxes)."""

    @torch.no_grad()
    def predict(self, image: torch.Tensor, task: str) -> MethodOutput:
        h, w = image.shape[-2:]
        x = pad_to_patches(self.normalise(image), self.patch)
        out = self.model.head(self.backbone.last_tokens(x[None]))
        best = int(torch.argmax(out["objectness"][0, -1]))
        # × 4 for the authors' patch 8: from the × 2 token grid to the pixels
        mask = F.interpolate(out["masks"][:, -1, best: best + 1].float(), scale_factor=self.patch // 2,
                             mode="bilinear", align_corners=False)[0, 0, :h, :w]
        binary = (mask > 0.5).cpu().numpy()
        return MethodOutput(binary.astype(np.float32), mask_box(largest_component(binary, 4)))
