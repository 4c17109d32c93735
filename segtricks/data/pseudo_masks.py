"""Pseudo-masks: a teacher cell's binary masks on a training set, which the cells that distil it
(``distill.teacher``) train on. One export per (teacher, dataset, threshold), shared by every student:

    <output root>/pseudo_masks/<key[:16]>/   <item id>.png (0/255, at the image's size)   complete.json

``key`` is the sha256 of the teacher's config hash, the dataset reference and the threshold. Each PNG
is written atomically (``segtricks.files.write_png``), so a killed export leaves whole masks only and
resumes at the first missing one; ``complete.json`` (the number of masks and a digest of their bytes)
is written last, and a student trains only on a complete export (``PseudoLabelled``). The export itself
(the teacher's predictions) is ``segtricks.inference.pseudo_labels``. Torch-free.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple
from urllib.parse import quote

import numpy as np

from segtricks.config.schema import Config, ConfigError, DatasetRef, canonical_sha256
from segtricks.data.datasets import DatasetError, RawDataset, Sample, binarise_mask, build_dataset, open_image
from segtricks.files import write_atomic, write_png

PSEUDO_MASKS = "pseudo_masks"  # under an output root: one folder per export


@dataclass(frozen=True)
class PseudoMaskFolder:
    """The files of one export (see the module docstring)."""

    dir: Path

    @classmethod
    def in_root(cls, output_root: str | Path, teacher_hash: str, ref: DatasetRef,
                threshold: float) -> "PseudoMaskFolder":
        """The export of the teacher of config hash ``teacher_hash`` on ``ref`` at ``threshold``."""
        key = canonical_sha256({"teacher": teacher_hash, "dataset": dataclasses.asdict(ref), "threshold": threshold})
        return cls(Path(output_root) / PSEUDO_MASKS / key[:16])

    @property
    def marker(self) -> Path:
        return self.dir / "complete.json"

    def mask_path(self, item_id: str) -> Path:
        return self.dir / f"{quote(item_id, safe='')}.png"  # an id with a slash stays one file

    def write_mask(self, item_id: str, mask: np.ndarray) -> None:
        """One item's boolean mask as a 0/255 PNG, atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_png(self.mask_path(item_id), mask.astype(np.uint8) * 255)

    def clear(self) -> None:
        """Remove the record first, then the masks: an export that is not complete is never read."""
        self.marker.unlink(missing_ok=True)
        for path in self.dir.glob("*.png"):
            path.unlink()

    def completion(self) -> Optional[Dict[str, object]]:
        """What ``complete`` recorded, or None while the export is not complete."""
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None

    def complete(self, item_ids: Sequence[str], about: Dict[str, object]) -> Dict[str, object]:
        """Record the export complete: the ids that have a mask (an item the teacher could not read has
        none), their count, and a digest of the masks' bytes; ``about`` (teacher, dataset, threshold) is
        kept beside them. Returns the record."""
        digest, masks = hashlib.sha256(), []
        for item_id in item_ids:
            path = self.mask_path(item_id)
            if path.is_file():
                masks.append(item_id)
                digest.update(item_id.encode("utf-8", "surrogateescape") + b"\0" + path.read_bytes())
        record = {**about, "masks": len(masks), "items": len(item_ids), "digest": digest.hexdigest()[:16]}
        write_atomic(self.marker, json.dumps(record, indent=1, sort_keys=True))
        return record


@dataclass
class PseudoLabelled(RawDataset):
    """The images of ``raw`` with a complete export's masks instead of its own (it may have none)."""

    raw: RawDataset
    folder: PseudoMaskFolder

    def __post_init__(self) -> None:
        if self.folder.completion() is None:
            raise DatasetError(f"pseudo-masks {self.folder.dir}: the export is not complete (no "
                               f"{self.folder.marker.name}); rerun the grid that holds the teacher cell, which "
                               f"exports them before this cell trains")
        self.has_masks, self.skipped = True, self.raw.skipped

    def __len__(self) -> int:
        return len(self.raw)

    def item_id(self, index: int) -> str:
        return self.raw.item_id(index)

    def item_files(self, index: int) -> Tuple[Path, ...]:
        return (*self.raw.item_files(index), self.folder.mask_path(self.item_id(index)))

    def identity(self) -> Dict[str, object]:
        return {**self.raw.identity(), "pseudo_masks": self.folder.completion()["digest"]}

    def load(self, index: int) -> Sample:
        sample = self.raw.load(index)
        path = self.folder.mask_path(sample.id)
        if not path.is_file():
            raise DatasetError(f"pseudo-mask {path} is missing: the teacher had no prediction for {sample.id} "
                               f"(an image it could not read); set data.train.on_error: skip to leave it out")
        mask = binarise_mask(np.asarray(open_image(path, "L")))
        if mask.shape != (sample.image.height, sample.image.width):
            raise DatasetError(f"pseudo-mask {path} is {mask.shape[1]}×{mask.shape[0]} but its image is "
                               f"{sample.image.width}×{sample.image.height}; remove {self.folder.dir} to export again")
        return dataclasses.replace(sample, mask=mask)


def training_set(cfg: Config) -> RawDataset:
    """What a config trains on: ``data.train``, with its teacher's pseudo-masks in place of its own
    masks for a distillation cell."""
    raw = build_dataset(cfg.data.train)
    if cfg.distill.teacher is None:
        return raw
    if cfg.distill.masks is None:
        raise ConfigError(f"distill.teacher {cfg.distill.teacher!r} names a cell of a grid, which finds its "
                          f"pseudo-masks: run this cell through python -m segtricks.ablate", "distill.teacher")
    return PseudoLabelled(raw, PseudoMaskFolder(Path(cfg.distill.masks)))
