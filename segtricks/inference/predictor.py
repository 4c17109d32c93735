"""Soft foreground masks of a trained model on arbitrary images, each at the image's own size.

The same path as the model's evaluation under our protocol. Sempart (``segtricks.evaluation.
model_evaluation``): ``EvalView``'s resize to ``cfg.data.image_size``, ``predict_raw`` (eval-mode
BatchNorm, the smaller side as foreground, bf16 autocast on CUDA), the post-processing tricks at the
prediction size, then ``resize_to`` each image's size. A method evaluated image by image (FOUND:
``segtricks.evaluation.method_evaluation``): its prediction at the image's size, then the tricks there.
A training-free method (``model=None``): its prediction at the image's size, then the tricks. Only the
ground truth is absent, and the float16 caches are not used.

    predictor = Predictor.from_training(Training(cfg, folder), post=["gf"])
    for ids, masks, skipped in predictor.batches(ImageFiles(paths)): ...   # masks: HxW float32 in [0, 1]
    predictor.predict([array_hxwx3_uint8, ...])                             # a list of HxW float32
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from segtricks.data.datasets import DatasetError, RawDataset, Sample, Skipped, open_image
from segtricks.data.loaders import data_loader
from segtricks.data.views import EvalView
from segtricks.runtime.device import resolve_device
from segtricks.runtime.threads import one_thread
from segtricks.engine.training import Training
from segtricks.evaluation.predict import predict_raw, resize_to
from segtricks.method.tricks import postprocess
from segtricks.methods.registry import build_method, training_recipe
from segtricks.config.schema import Config


@dataclass
class ImageFiles(RawDataset):
    """Image files without ground truth, named by their file stems."""

    paths: Sequence[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def item_id(self, index: int) -> str:
        return Path(self.paths[index]).stem

    def load(self, index: int) -> Sample:
        return Sample(self.item_id(index), open_image(Path(self.paths[index]), "RGB"))


@dataclass
class ImageArrays(RawDataset):
    """HxWx3 uint8 arrays (the MLflow model's input), named by their position."""

    arrays: Sequence[np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays)

    def item_id(self, index: int) -> str:
        return str(index)

    def load(self, index: int) -> Sample:
        array = np.asarray(self.arrays[index])
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise DatasetError(f"image {index}: expected an HxWx3 uint8 RGB array, got {array.dtype} of shape "
                               f"{array.shape}")
        return Sample(self.item_id(index), Image.fromarray(array))


class Predictor:
    """A trained model, its config, the post-processing tricks to apply, the device and batch size."""

    def __init__(self, model: Optional[torch.nn.Module], cfg: Config, post: Sequence[str] = (),
                 device: str | torch.device = "auto", batch_size: Optional[int] = None) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.cfg, self.post = cfg, list(post)
        self.batch_size = batch_size or cfg.optim.batch_size
        if model is None:  # a method that trains nothing (TokenCut, LOST, Deep Spectral)
            self.model, self.method = None, build_method(cfg, self.device)
        else:
            self.model = model.to(self.device).eval()
            self.method = training_recipe(cfg).as_method(cfg, self.model)  # None: Sempart's batched path

    @classmethod
    def from_training(cls, training: Training, post: Sequence[str] = (), device: str | torch.device = "auto",
                      batch_size: Optional[int] = None) -> "Predictor":
        """The best checkpoint of a training (its backbone resolves to the weights it trained on)."""
        return cls(training.model(), training.cfg, post, device, batch_size)

    @torch.no_grad()
    def batches(self, raw: RawDataset, workers: int | str = 0,
                on_error: str = "skip") -> Iterator[Tuple[List[str], List[np.ndarray], List[Skipped]]]:
        """Per batch: the ids, their soft masks (HxW float32 in [0, 1], each at its image's size) and
        the items that could not be read (``on_error="raise"``: the first one raises instead)."""
        view = EvalView(raw, self.cfg.data.image_size, on_error, scored=False)
        for batch in data_loader(view, self.batch_size, workers, self.device, view.collate):
            if not batch.ids:
                yield [], [], batch.skipped
                continue
            if self.method is not None:
                yield batch.ids, [self.per_image(o) for o in batch.originals], batch.skipped
                continue
            inputs = batch.images.to(self.device)
            soft = postprocess(predict_raw(self.model, inputs, "ours"), inputs, self.post, self.cfg).cpu()
            with one_thread():  # small ops per image, as in the evaluation
                masks = [resize_to(m[None], [o.shape[-2:]])[0].numpy() for m, o in zip(soft, batch.originals)]
            yield batch.ids, masks, batch.skipped

    def per_image(self, original: torch.Tensor) -> np.ndarray:
        """A per-image method's mask of one (3, H, W) image, post-processed at its size."""
        image = original.to(self.device)
        mask = torch.from_numpy(self.method.predict(image, "saliency").mask)[None, None].to(self.device)
        with one_thread(self.device.type == "cpu"):
            return postprocess(mask, image[None], self.post, self.cfg)[0, 0].float().cpu().numpy()

    def predict(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Soft masks (HxW float32 in [0, 1]) of HxWx3 uint8 images, in order."""
        masks: List[np.ndarray] = []
        for _, batch_masks, _ in self.batches(ImageArrays(images), on_error="raise"):
            masks += batch_masks
        return masks
