"""Which evaluation of a grid writes which cache rows, and the bytes they take: exact, from the row
sizes, with nothing measured: the free-space check before every grid (``disk_needed``) runs it without
loading the measuring code, and ``segtricks.estimate.cost`` prices the same plan.

The first cell of a training predicts and caches its masks, the first training on a backbone caches
its keys, and the ``cache`` config section can turn either off. A backbone's patch size and width come
from its registry entry (``architecture``), not from building it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from segtricks.config.schema import Config, DatasetRef
from segtricks.data.datasets import DatasetError, DatasetSize, dataset_size
from segtricks.registry import registered_attributes
from segtricks.runners.plan import Action

BACKBONE_REGISTRY = ("segtricks.models.backbones", "BACKBONES")


def architecture(cfg: Config) -> Tuple:
    """What a backbone costs depends on: its ViT's patch, width and depth (not its weights), its register
    tokens and whether it rotates queries and keys (RoPE), as its registry entry declares them. The last
    two join the key only when present, so that measurements kept from before they existed still count."""
    entry = registered_attributes(*BACKBONE_REGISTRY)[cfg.backbone.name]
    extra = (entry["registers"], entry["rope"]) if entry["registers"] or entry["rope"] else ()
    return (entry["patch"], entry["dim"], entry["depth"]) + extra


@dataclass
class PlannedEvaluation:
    """One evaluation of a cell: what it predicts and which cache rows it adds."""

    ref: DatasetRef
    protocol: str
    predict: str  # "model", "head" (the backbone's keys are cached) or "cached" (the masks are)
    mask_bytes: int = 0
    key_bytes: int = 0


class CachePlan:
    """Which evaluation of a grid computes what, cell after cell in the order they run: the first
    cell of a training predicts and caches its masks, the first training on a backbone caches its
    keys, and the ``cache`` config section can turn either off."""

    def __init__(self, size_of: Callable[[DatasetRef], "DatasetSize"]) -> None:
        self.size_of = size_of
        self.masks: set = set()
        self.keys: set = set()

    def evaluations(self, cell) -> List[PlannedEvaluation]:
        cfg, out = cell.cfg, []
        patch, dim = architecture(cfg)[:2]
        side = cfg.data.image_size // patch
        for ref in cfg.eval:
            n = self.size_of(ref).images
            for protocol in cfg.eval_protocols:  # each protocol predicts (and caches) its own masks
                masks = (cell.training_hash, ref.name, ref.root, ref.split, ref.limit, protocol)
                keys = (cfg.backbone.name, cfg.backbone.weights, cfg.backbone.rope_keys, ref.name, ref.root,
                        ref.split, ref.limit, cfg.data.image_size, protocol)
                planned = PlannedEvaluation(ref, protocol, "cached" if masks in self.masks
                                            else "head" if keys in self.keys else "model")
                if cfg.cache.masks and masks not in self.masks:
                    planned.mask_bytes = n * cfg.data.image_size ** 2 * 2
                    self.masks.add(masks)
                if cfg.cache.keys and keys not in self.keys:
                    planned.key_bytes = n * dim * side * side * 2
                    self.keys.add(keys)
                out.append(planned)
        return out


def disk_needed(cells: Sequence, actions: Dict[str, Action]) -> float:
    """Bytes the caches of the cells to run will add (exact row sizes; nothing is measured): the
    free-space check before a grid starts. A dataset that is absent and unpublished counts as empty
    (the preflight names it)."""
    def known_size(ref: DatasetRef) -> DatasetSize:
        try:
            return dataset_size(ref)
        except DatasetError:
            return DatasetSize(0, (0, 0), "absent")

    caches = CachePlan(known_size)
    total = 0.0
    for cell in cells:
        if cell.trains and actions.get(cell.id) is not Action.SKIP:
            total += sum(p.mask_bytes + p.key_bytes for p in caches.evaluations(cell))
    return total
