"""Dataset registry and the views the trainer and evaluator read through.

A registered dataset is ``fn(ref: DatasetRef) -> RawDataset``: a list of items, each loading as
``(id, RGB PIL image, boolean mask array or None)``. ``TrainView`` applies SPEC §6's augmentations;
``EvalView`` resizes the image to the prediction size and keeps the mask at its original size.
Roots come from ``ref.root`` or ``$SEGTRICKS_DATA/<dataset folder>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from segtricks.config import DatasetRef
from segtricks.registry import Registry
from segtricks.synthetic import SyntheticShapes

DATASETS = Registry("dataset", contract="fn(ref: DatasetRef) -> RawDataset (len, load(i) -> (id, PIL RGB, bool mask | None))")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the folder or file and the fix."""


class RawDataset:
    """Items as ``(id, image, mask)``; subclasses implement ``__len__`` and ``load``."""

    has_masks: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Tuple[str, Image.Image, Optional[np.ndarray]]:
        raise NotImplementedError


@dataclass
class FilePairs(RawDataset):
    """Image files with optional mask files (binary: > 127 is foreground)."""

    items: List[Tuple[str, Path, Optional[Path]]]

    def __post_init__(self) -> None:
        self.has_masks = bool(self.items) and all(m is not None for _, _, m in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Tuple[str, Image.Image, Optional[np.ndarray]]:
        item_id, image_path, mask_path = self.items[index]
        image = _open(image_path, "RGB")
        mask = None
        if mask_path is not None:
            mask = np.asarray(_open(mask_path, "L")) > 127
            if mask.shape != (image.height, image.width):
                raise DatasetError(
                    f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]} but its image {image_path} is "
                    f"{image.width}×{image.height}; masks must have their image's size"
                )
        return item_id, image, mask


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as exc:  # PIL raises several types for truncated or non-image files
        raise DatasetError(f"cannot read {path}: {exc} (replace or remove the file)") from None


def dataset_root(ref: DatasetRef, folder: str, published: str) -> Path:
    """The dataset's folder: ``ref.root`` or ``$SEGTRICKS_DATA/<folder>``; an error if missing."""
    if ref.root:
        root = Path(ref.root).expanduser()
    elif os.environ.get("SEGTRICKS_DATA"):
        root = Path(os.environ["SEGTRICKS_DATA"]) / folder
    else:
        raise DatasetError(
            f"dataset {ref.name!r}: no root given; set its root in the config or $SEGTRICKS_DATA "
            f"to the folder that holds {folder}/ (published at {published})"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset {ref.name!r}: folder {root} does not exist (expected the "
                           f"{folder}/ release layout, published at {published})")
    return root


def image_mask_pairs(image_dir: Path, mask_dir: Optional[Path], ref: DatasetRef) -> FilePairs:
    if not image_dir.is_dir():
        raise DatasetError(f"dataset {ref.name!r}: image folder {image_dir} does not exist")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"dataset {ref.name!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    items = []
    for img in images:
        mask = None
        if mask_dir is not None:
            mask = mask_dir / f"{img.stem}.png"
            if not mask.is_file():
                raise DatasetError(f"image {img} has no mask {mask}")
        items.append((img.stem, img, mask))
    return FilePairs(items[: ref.limit] if ref.limit else items)


@DATASETS.register()
def folder(ref: DatasetRef) -> RawDataset:
    """Any ``<root>/images/*`` with optional ``<root>/masks/<same stem>.png`` (e.g. shared/data/sod300)."""
    if not ref.root or not Path(ref.root).is_dir():
        raise DatasetError(f"dataset 'folder': root {ref.root!r} is not a folder (it needs images/ "
                           f"and optionally masks/)")
    root = Path(ref.root)
    masks = root / "masks"
    return image_mask_pairs(root / "images", masks if masks.is_dir() else None, ref)


@DATASETS.register()
def duts_tr(ref: DatasetRef) -> RawDataset:
    """DUTS-TR training images, ``DUTS-TR/DUTS-TR-Image/*.jpg`` (labels are never used)."""
    root = dataset_root(ref, "DUTS-TR", "http://saliencydetection.net/duts/")
    return image_mask_pairs(root / "DUTS-TR-Image", None, ref)


@DATASETS.register()
def synthetic(ref: DatasetRef) -> RawDataset:
    """Generated shapes on textured backgrounds (segtricks.synthetic); splits train/val/test."""
    return SyntheticShapes(split=ref.split, limit=ref.limit)


def build_dataset(ref: DatasetRef) -> RawDataset:
    return DATASETS.get(ref.name)(ref)


class TrainView(Dataset):
    """Augmented training images (SPEC §6): shorter side → resize_short, random crop, flip, jitter."""

    def __init__(self, raw: RawDataset, image_size: int, resize_short: int) -> None:
        if resize_short < image_size:
            raise ValueError(f"data.resize_short ({resize_short}) must be ≥ data.image_size ({image_size})")
        self.raw = raw
        self.transform = T.Compose([
            T.Resize(resize_short),
            T.RandomCrop(image_size),
            T.RandomHorizontalFlip(0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(0.2),
            T.ToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.raw.load(index)[1])


class EvalView(Dataset):
    """(id, image resized to image_size², mask at its original size) for evaluation."""

    def __init__(self, raw: RawDataset, image_size: int) -> None:
        if not raw.has_masks:
            raise DatasetError("evaluation needs a dataset with masks")
        self.raw = raw
        self.transform = T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int):
        item_id, image, mask = self.raw.load(index)
        return item_id, self.transform(image), torch.from_numpy(mask)

    @staticmethod
    def collate(batch):
        ids, images, masks = zip(*batch)
        return list(ids), torch.stack(images), list(masks)
