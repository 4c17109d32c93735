"""What evaluation computes once and keeps on disk: a model's raw soft masks, and a backbone's keys.

Prediction is 86–95% of a cell's evaluation time; post-processing and metrics are cheap beside it.
- **Masks** (``prediction_cache``): cells that share a training (a GF cell and its baseline, a
  study's trials that differ only in post-processing) predict each image once. Stored after
  foreground selection and before any post-processing trick, at the prediction size, in
  ``<training folder>/predictions/``.
- **Keys** (``key_cache``): trainings on one backbone see the same frozen keys for each evaluation
  image, so every evaluation after the first runs only the head. Stored in ``<output root>/keys/``.

Each is one float16 ``.npy`` (rows in dataset order, read and written a row at a time: ``RowFile``)
and a ``.json`` naming the ids it holds and what the cache belongs to (kind, backbone and weights, dataset, size, protocol, rows, the
training for masks, when it was made: what ``python -m segtricks.cache ls|rm`` reads). The file name
carries a content hash of everything the rows depend on (for masks: the head's weights and buffers
and the backbone's weights id; for keys: the backbone and its weights id; for both: the dataset's
reference and item ids, the prediction size and the protocol). A retrained model or a changed
dataset hashes differently, so a stale file is never read: it is replaced. Files appear by rename,
so a killed evaluation leaves no half-written cache; the temporary files carry their writer's host
and pid (``segtricks.files.temp_path``), so that ``cache rm`` can tell a live writer's from a dead one's.
The ``.npy`` is built row by row in its temporary file, synced and renamed; the ``.json`` is then
written whole (``segtricks.files.write_atomic``): its presence says the cache is complete.

Rows pass through float16 whether they come from the cache or are computed, so that the first
evaluation and every later one report the same numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from segtricks.evaluation.cache_files import (SUFFIXES, cache_file, caches_of_stem, dataset_stem, keys_stem,
                                              masks_stem, meta_file)
from segtricks.files import remove_dead_temps, temp_path, write_atomic
from segtricks.config.schema import DatasetRef, canonical_sha256
from segtricks.data.datasets import RawDataset
from segtricks.models.model import SegmentationModel


def model_digest(model: SegmentationModel) -> str:
    """sha256 of the head's parameters and buffers, in state-dict order, and the backbone's weights id
    and features (its positional rule: keys computed under another rule are other keys)."""
    digest = hashlib.sha256(f"{model.backbone.weights_id} {model.backbone.features}".encode())
    for name, tensor in model.head.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class RowFile:
    """A float16 ``.npy`` of (N, *row) read and written a row at a time with pread/pwrite. Not a memory
    map: a written map's dirty pages count in the process's resident set until they are flushed
    (gigabytes while a key cache of DUTS-TE is built), and a read map's pages once touched."""

    file: Any  # an unbuffered binary file object (closed with it: no descriptor outlives the cache)
    offset: int  # where the rows start, after the .npy header

    @classmethod
    def create(cls, path: Path, shape: Tuple[int, ...]) -> "RowFile":
        fh = open(path, "w+b", buffering=0)
        np.lib.format.write_array_header_2_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                  "fortran_order": False, "shape": shape})
        offset = fh.tell()
        fh.truncate(offset + 2 * math.prod(shape))  # sparse until written
        return cls(fh, offset)

    @classmethod
    def open(cls, path: Path) -> "RowFile":
        fh = open(path, "rb", buffering=0)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        read_header(fh)
        return cls(fh, fh.tell())

    def read(self, index: int, shape: Tuple[int, ...]) -> np.ndarray:
        size = 2 * math.prod(shape)
        return np.frombuffer(os.pread(self.file.fileno(), size, self.offset + index * size), np.float16).reshape(shape)

    def write(self, index: int, row: np.ndarray) -> None:
        data = np.ascontiguousarray(row, dtype=np.float16).tobytes()
        os.pwrite(self.file.fileno(), data, self.offset + index * len(data))


class ArrayCache:
    """Rows of one shape per dataset item, by id. ``get(ids)`` returns the rows of a batch (None when
    any is missing); ``put(ids, rows)`` records computed ones; ``close(seen)`` makes what was recorded
    the cache when it covers every id the evaluation saw; ``discard()`` drops it. ``about`` (what
    the cache belongs to) is written into its ``.json`` beside the ids."""

    def __init__(self, folder: Path, stem: str, key: Dict[str, Any], ids: List[str],
                 row_shape: Tuple[int, ...], about: Optional[Dict[str, Any]] = None) -> None:
        self.folder, self.stem, self.ids, self.row_shape = Path(folder), stem, ids, row_shape
        self.about = about or {}
        self.path = cache_file(self.folder, stem, canonical_sha256({**key, 'ids': ids}))
        self.row = {image_id: i for i, image_id in enumerate(ids)}
        self.row_bytes = 2 * math.prod(row_shape)  # float16
        self._stored: Optional[RowFile] = None
        self._present: set = set()
        try:  # the .json first: a cache is complete once its .json is there (it is published last)
            present = json.loads(meta_file(self.path).read_text())["present"]
            self._stored, self._present = RowFile.open(self.path), set(present)
        except FileNotFoundError:  # not built yet, or removed meanwhile (cache rm, a newer model's cache)
            pass
        self._new: Optional[RowFile] = None  # the file being written, when the cache is built
        self._written: set = set()

    @property
    def complete(self) -> bool:
        return self._stored is not None

    def get(self, ids: List[str]) -> Optional[torch.Tensor]:
        if self._stored is None or not all(i in self._present for i in ids):
            return None
        rows = [self._stored.read(self.row[i], self.row_shape) for i in ids]
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    def put(self, ids: List[str], rows: torch.Tensor) -> None:
        """Record ``rows`` (B, *row_shape) of ``ids`` (the cache is written only when built anew)."""
        if self._stored is not None:
            return
        if self._new is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_dead_temps(self.folder, SUFFIXES)  # what writers killed here left behind
            self._tmp = temp_path(self.path)
            self._new = RowFile.create(self._tmp, (len(self.ids), *self.row_shape))
        known = [k for k, i in enumerate(ids) if i in self.row]  # a dataset whose item_id() differs
        values = rows[known].cpu().numpy().astype(np.float16)   # from its samples' ids is not cached
        for k, value in zip(known, values):
            self._new.write(self.row[ids[k]], value)
        self._written.update(ids[k] for k in known)

    def discard(self) -> None:
        """Drop what was written (the evaluation failed or was interrupted)."""
        if self._new is not None:
            self._new.file.close()
            self._new = None
            self._tmp.unlink(missing_ok=True)

    def close(self, seen: List[str]) -> None:
        """Publish the built cache when it holds every id in ``seen`` (the evaluation ran to its end)."""
        if self._new is None:
            return
        complete = set(seen) <= self._written
        if complete:  # on disk before the .json says it is complete
            os.fsync(self._new.file.fileno())
        self._new.file.close()
        self._new = None
        if not complete:
            self._tmp.unlink(missing_ok=True)
            return
        for old in caches_of_stem(self.folder, self.stem):  # an older model's or dataset's rows: stale
            old.unlink(missing_ok=True)
        # the rows were written in place through pwrite (RowFile), so the .npy is renamed by hand
        os.replace(self._tmp, self.path)
        write_atomic(meta_file(self.path), json.dumps({"present": sorted(self._written), **self.about,
                                                                 "rows": len(self.ids), "created": time.time()}))


class NoCache:
    """A cache that ``cache.keys`` / ``cache.masks: false`` turns off: nothing is read or written, and
    rows pass through float16 as cached ones do (``raw_masks_of``), so the switch never changes a number."""

    complete = False

    def get(self, ids: List[str]) -> None:
        return None

    def put(self, ids: List[str], rows: torch.Tensor) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self, seen: List[str]) -> None:
        pass


def _dataset_key(ref: DatasetRef, raw: RawDataset, size: int, protocol: str) -> Tuple[str, Dict[str, Any], List[str]]:
    """(file name stem, hashed key, ids) of a dataset's rows; ``protocol`` is the protocol's name, as
    the caches made before ``Protocol`` existed carry it."""
    ids = [raw.item_id(i) for i in range(len(raw))]
    stem = dataset_stem(ref.name, ref.split, ref.limit, size, protocol)
    return stem, {"size": size, "protocol": protocol, "dataset": [ref.name, ref.root, ref.split, ref.limit]}, ids


def _about(kind: str, model: SegmentationModel, ref: DatasetRef, size: int, protocol: str) -> Dict[str, Any]:
    """What a cache belongs to, for ``segtricks.cache`` (informative: the file name's hash is its identity)."""
    return {"kind": kind, "backbone": model.backbone.name, "weights": model.backbone.weights_id,
            "dataset": {"name": ref.name, "split": ref.split, "limit": ref.limit, "root": ref.root},
            "size": size, "protocol": protocol}


def prediction_cache(folder: Path, model: SegmentationModel, ref: DatasetRef, raw: RawDataset, size: int,
                     protocol: str, precision: str) -> ArrayCache:
    """Raw masks (1, size, size) of ``model``, predicted on float16-rounded keys under ``precision``
    (``segtricks.runtime.device.Precision.name``: a cache made on a GPU in bf16 is not one made on the CPU)."""
    stem, key, ids = _dataset_key(ref, raw, size, protocol)
    about = {**_about("masks", model, ref, size, protocol), "precision": precision,
             "training": str(Path(folder).resolve().parent)}  # <root>/trainings/<training hash[:16]>
    return ArrayCache(folder, masks_stem(stem), {**key, "model": model_digest(model), "float16_keys": True,
                                              "precision": precision}, ids, (1, size, size), about)


def key_cache(folder: Path, model: SegmentationModel, ref: DatasetRef, raw: RawDataset, size: int,
              protocol: str, precision: str) -> ArrayCache:
    """Backbone keys (C, size/p, size/p) computed under ``precision``, shared by every model on the
    same backbone and weights."""
    stem, key, ids = _dataset_key(ref, raw, size, protocol)
    backbone = model.backbone
    side = size // backbone.patch_size
    return ArrayCache(folder, keys_stem(backbone.name, stem),
                      {**key, "backbone": backbone.name, "weights": backbone.weights_id,
                       "features": backbone.features, "precision": precision}, ids,
                      (backbone.embed_dim, side, side), {**_about("keys", model, ref, size, protocol),
                                                         "precision": precision})


def as_cached(rows: torch.Tensor) -> torch.Tensor:
    """Rows at the caches' precision (float16, back to float32): what every evaluation uses."""
    return rows.half().float()
