"""A model's raw soft masks on one dataset, kept on disk: cells that share a training (a GF cell and
its baseline, a study's trials that differ only in post-processing) predict each image once.

Prediction is 86–95% of a cell's evaluation time; post-processing and metrics are cheap beside it.
``evaluate_model`` stores the masks after foreground selection and before any post-processing
trick, at the prediction size, as float16 in ``<training folder>/predictions/``: one ``.npy``
(memory-mapped, rows in dataset order) and a ``.json`` naming its ids. The file name carries a
content hash of what the masks depend on: the head's weights and buffers, the backbone's weights
id, the dataset (reference and item ids), the prediction size and the protocol. A retrained or
resumed model, or a changed dataset, hashes differently, so a stale cache is never read: it is
replaced. Files appear by rename, so a killed evaluation leaves no half-written cache.

Masks pass through float16 whether they come from the cache or the model, so that the first
evaluation and every later one report the same numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from segtricks.config import DatasetRef, canonical_sha256
from segtricks.datasets import RawDataset
from segtricks.model import SegmentationModel


def model_digest(model: SegmentationModel) -> str:
    """sha256 of the head's parameters and buffers, in state-dict order, and the backbone's weights id."""
    digest = hashlib.sha256(model.backbone.weights_id.encode())
    for name, tensor in model.head.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class PredictionCache:
    """The cache of one (model, dataset, size, protocol). ``get(ids)`` returns the cached masks of a
    batch (or None when any is missing); ``put(ids, masks)`` records computed ones; ``close()`` makes
    what was recorded the cache, when it covers every item the evaluation saw."""

    def __init__(self, folder: Path, model: SegmentationModel, ref: DatasetRef, raw: RawDataset,
                 size: int, protocol: str) -> None:
        self.ids = [raw.item_id(i) for i in range(len(raw))]
        key = {"model": model_digest(model), "size": size, "protocol": protocol,
               "dataset": [ref.name, ref.root, ref.split, ref.limit], "ids": self.ids}
        stem = f"{ref.name}-{ref.split}-{ref.limit or 'all'}-{size}-{protocol}"
        self.folder, self.stem = Path(folder), stem
        self.path = self.folder / f"{stem}-{canonical_sha256(key)[:16]}.npy"
        self.row = {image_id: i for i, image_id in enumerate(self.ids)}
        self.size = size
        self._stored: Optional[np.ndarray] = None
        self._present: set = set()
        if self.path.is_file() and self.path.with_suffix(".json").is_file():
            self._stored = np.load(self.path, mmap_mode="r")
            self._present = set(json.loads(self.path.with_suffix(".json").read_text())["present"])
        self._new: Optional[np.ndarray] = None  # the file being written, when the cache is built
        self._written: set = set()

    @property
    def complete(self) -> bool:
        return self._stored is not None

    def get(self, ids: List[str]) -> Optional[torch.Tensor]:
        if self._stored is None or not all(i in self._present for i in ids):
            return None
        rows = [self.row[i] for i in ids]
        return torch.from_numpy(np.asarray(self._stored[rows], dtype=np.float32))[:, None]

    def put(self, ids: List[str], masks: torch.Tensor) -> None:
        """Record masks (B, 1, size, size) of ``ids`` (the cache is written only when built anew)."""
        if self._stored is not None:
            return
        if self._new is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            self._new = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.float16,
                                                  shape=(len(self.ids), self.size, self.size))
        known = [k for k, i in enumerate(ids) if i in self.row]  # a dataset whose item_id() differs
        rows = [self.row[ids[k]] for k in known]                # from its samples' ids is not cached
        self._new[rows] = masks[known, 0].cpu().numpy().astype(np.float16)
        self._written.update(ids[k] for k in known)

    def discard(self) -> None:
        """Drop what was written (the evaluation failed or was interrupted)."""
        if self._new is not None:
            self._new = None
            self._tmp.unlink(missing_ok=True)

    def close(self, seen: List[str]) -> None:
        """Publish the built cache when it holds every id in ``seen`` (the evaluation ran to its end)."""
        if self._new is None:
            return
        self._new.flush()
        self._new = None
        if not set(seen) <= self._written:
            self._tmp.unlink(missing_ok=True)
            return
        for old in self.folder.glob(f"{self.stem}-*"):  # an older model's or dataset's masks: stale
            old.unlink(missing_ok=True)
        os.replace(self._tmp, self.path)
        meta = self.path.with_suffix(".json")
        tmp_meta = meta.with_name(f".{meta.name}.tmp")
        tmp_meta.write_text(json.dumps({"present": sorted(self._written)}))
        os.replace(tmp_meta, meta)


def as_cached(masks: torch.Tensor) -> torch.Tensor:
    """Masks at the cache's precision (float16, back to float32): what every evaluation scores."""
    return masks.half().float()
