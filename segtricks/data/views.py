"""The torch views the trainer and the model evaluation read a dataset through (``segtricks.data.datasets``).

``TrainView`` applies Sempart's training augmentations (docs/method.md#training-data-and-augmentation),
``FoundTrainView`` FOUND's (docs/methods.md#found); ``EvalView`` resizes the image to the prediction size
and keeps the mask and boxes at the original size.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from segtricks.data.datasets import DatasetError, RawDataset, Sample, Skipped, load_or_skip


class TrainView(Dataset):
    """Augmented training images (docs/method.md#training-data-and-augmentation): shorter side → resize_short, random crop, flip, jitter."""

    def __init__(self, raw: RawDataset, image_size: int, resize_short: int, on_error: str = "raise") -> None:
        if resize_short < image_size:
            raise ValueError(f"data.resize_short ({resize_short}) must be ≥ data.image_size ({image_size})")
        self.raw, self.on_error = raw, on_error
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

    def __getitem__(self, item: Tuple[int, int]) -> Optional[torch.Tensor]:
        """``item`` = (index, seed): the image is augmented from its own seed (``loaders.EpochSampler``),
        so it comes out the same in any worker process."""
        index, seed = item
        sample = load_or_skip(self.raw, index, self.on_error)
        if isinstance(sample, Skipped):
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(sample.image)

    @staticmethod
    def collate(batch: List[Optional[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([b for b in batch if b is not None])


class FoundTrainView(Dataset):
    """FOUND's training images (valeoai/FOUND ``datasets.py::_preprocess_data_aug`` with its config
    ``found_DUTS-TR.yaml``): the shorter side resized to ``size`` (bilinear, the other side truncated),
    rescaled by s ~ U(``scale_range``) (each side truncated), resized to size × size (the aspect
    squashed), then with probability 0.5 OpenCV's Gaussian blur of kernel ⌊0.1·size/2⌋·2 + 1 and
    σ ~ U(0.1, 2). No crop, no flip, no colour jitter."""

    def __init__(self, raw: RawDataset, size: int, scale_range: Tuple[float, float] = (0.1, 3.0),
                 on_error: str = "raise") -> None:
        self.raw, self.size, self.scale_range, self.on_error = raw, size, scale_range, on_error
        self.kernel = int(0.1 * size // 2 * 2) + 1

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, item: Tuple[int, int]) -> Optional[torch.Tensor]:
        """``item`` = (index, seed), as ``TrainView``'s."""
        index, seed = item
        sample = load_or_skip(self.raw, index, self.on_error)
        if isinstance(sample, Skipped):
            return None
        rng = np.random.default_rng(seed)
        image, size = sample.image, self.size
        w, h = image.size
        short = [size, int(w / h * size)] if w > h else [int(h / w * size), size]  # (h, w)
        image = TF.resize(image, short, interpolation=T.InterpolationMode.BILINEAR)
        scale = rng.uniform(*self.scale_range)
        image = TF.resize(image, [max(1, int(short[0] * scale)), max(1, int(short[1] * scale))],
                          interpolation=T.InterpolationMode.BILINEAR)
        pixels = np.array(TF.resize(image, [size, size], interpolation=T.InterpolationMode.BILINEAR))
        if rng.random() < 0.5:  # the authors' probability, fixed in their GaussianBlur
            pixels = cv2.GaussianBlur(pixels, (self.kernel, self.kernel), rng.uniform(0.1, 2.0))
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0

    collate = staticmethod(TrainView.collate)


class SelfMaskTrainView(Dataset):
    """SelfMask's training pairs (NoelShin/selfmask ``datasets/duts.py``, ``base_dataset.py``,
    ``augmentations/``): the image resized to size × size (bilinear, the aspect squashed), its mask kept
    at its own resolution; both rescaled by s ~ U(``scale_range``) (the image bilinearly, the mask
    nearest, each side ⌊side·s⌋); padded at the bottom and right to size × size, the image with its
    mean colour and the mask with 0 (the authors' random crop, which never moves when s ≤ 1); flipped
    horizontally with p = 0.5; then the image alone: ColorJitter(0.8, 0.8, 0.8, 0.2) with p = 0.8,
    RandomGrayscale(0.2), and with p = 0.5 OpenCV's Gaussian blur of kernel ⌊0.1·size/2⌋·2 + 1 and
    σ ~ U(0.1, 2). Items ``(index, seed)`` → (image (3, S, S) in [0, 1], mask (S, S) bool)."""

    def __init__(self, raw: RawDataset, size: int, scale_range: Tuple[float, float] = (0.1, 1.0),
                 on_error: str = "raise") -> None:
        self.raw, self.size, self.scale_range, self.on_error = raw, size, scale_range, on_error
        self.kernel = int(0.1 * size // 2 * 2) + 1
        self.jitter = T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8)
        self.grayscale = T.RandomGrayscale(0.2)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, item: Tuple[int, int]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        index, seed = item
        sample = load_or_skip(self.raw, index, self.on_error)
        if isinstance(sample, Skipped):
            return None
        if sample.mask is None:
            raise DatasetError(f"{self.raw.item_id(index)}: no mask; SelfMask trains on masks (pseudo-masks): "
                               f"give data.train a dataset with masks (a folder with masks/)")
        rng = np.random.default_rng(seed)
        size = self.size
        image = TF.resize(sample.image, [size, size], interpolation=T.InterpolationMode.BILINEAR)
        side = max(1, int(size * rng.uniform(*self.scale_range)))
        image = TF.resize(image, [side, side], interpolation=T.InterpolationMode.BILINEAR)
        mask = TF.resize(torch.from_numpy(sample.mask.astype(np.uint8))[None], [side, side],
                         interpolation=T.InterpolationMode.NEAREST)
        fill = tuple(np.array(image).mean(axis=(0, 1)).astype(np.uint8).tolist())
        image = TF.pad(image, [0, 0, size - side, size - side], fill=fill)
        mask = TF.pad(mask, [0, 0, size - side, size - side], fill=0)
        if rng.random() > 0.5:  # the authors flip when random() > p
            image, mask = TF.hflip(image), TF.hflip(mask)
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's global stream
            torch.manual_seed(seed)
            image = self.grayscale(self.jitter(image))
        pixels = np.array(image)
        if rng.random() < 0.5:
            pixels = cv2.GaussianBlur(pixels, (self.kernel, self.kernel), rng.uniform(0.1, 2.0))
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0, mask[0].bool()

    @staticmethod
    def collate(batch: List[Optional[Tuple[torch.Tensor, torch.Tensor]]]) -> Tuple[torch.Tensor, torch.Tensor]:
        kept = [b for b in batch if b is not None]
        return torch.stack([image for image, _ in kept]), torch.stack([mask for _, mask in kept])


@dataclass
class EvalBatch:
    ids: List[str]
    images: torch.Tensor  # (B, 3, S, S) in [0, 1], resized to the prediction size
    originals: List[torch.Tensor] = field(default_factory=list)  # (3, H, W) in [0, 1]
    masks: List[Optional[torch.Tensor]] = field(default_factory=list)  # (H, W) bool
    boxes: List[Optional[np.ndarray]] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)  # items of the batch that failed to load

    def pin_memory(self) -> "EvalBatch":
        """The batch with the images the model reads in page-locked memory (``torch.utils.data`` calls
        this when the loader pins memory, on CUDA), so that their copy to the GPU is asynchronous.
        The originals and masks stay where they are: the metrics read them on the CPU."""
        return replace(self, images=self.images.pin_memory())


class EvalView(Dataset):
    """Samples resized to the prediction size, with their originals, masks and boxes.

    ``scored=False`` (segmenting images without ground truth) drops the check that there is any."""

    def __init__(self, raw: RawDataset, image_size: int, on_error: str = "raise", scored: bool = True) -> None:
        if scored and not (raw.has_masks or raw.has_boxes):
            raise DatasetError("evaluation needs a dataset with masks or boxes")
        self.raw, self.on_error, self.size = raw, on_error, image_size
        self.to_tensor = T.ToTensor()

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> Union[Sample, Skipped]:
        return load_or_skip(self.raw, index, self.on_error)

    def collate(self, batch: List[Union[Sample, Skipped]]) -> EvalBatch:
        samples = [s for s in batch if isinstance(s, Sample)]
        originals = [self.to_tensor(s.image) for s in samples]
        resized = [T.functional.resize(o, [self.size, self.size], antialias=True) for o in originals]
        return EvalBatch(
            ids=[s.id for s in samples],
            images=torch.stack(resized) if resized else torch.empty(0, 3, self.size, self.size),
            originals=originals,
            masks=[None if s.mask is None else torch.from_numpy(s.mask) for s in samples],
            boxes=[s.boxes for s in samples],
            skipped=[s for s in batch if isinstance(s, Skipped)],
        )
