"""How a trained model is scored: the evaluation protocols, each a small declarative ``Protocol``.

A config names the protocols its cells are scored under (``eval_protocols: [ours, reference]``); each
adds its own metrics to the run (``Protocol.dataset_key``). The evaluation code reads what to do from
the protocol's fields, never from its name. Torch-free: configs are validated against this registry
before torch is imported (``segtricks.registry.registered_names``).

- ``ours`` (docs/evaluation.md#our-protocol): predictions at the configured size, each soft mask resized to its ground truth's
  original size; BatchNorm with its running statistics; foreground chosen per image.
- ``reference`` (docs/evaluation.md#the-references-protocol, to compare with the paper's tables): image, ground truth and boxes
  resized (shorter side = the configured size) and centre-cropped to a square, metrics on the crop;
  batches of 8 with BatchNorm normalising by the test batch's statistics; one inversion decision per
  batch. Precomputed maps get the same crop (BatchNorm and inversion do not apply to them).

The reference's view (``reference_view``, ``reference_mask``, ``reference_boxes``) is here, beside the
field that asks for it (``centre_crop``), for the model and the map evaluation alike; torchvision is
imported only when an image is cropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from segtricks.registry import Registry

if TYPE_CHECKING:
    import torch

PROTOCOLS = Registry("evaluation protocol", contract="a Protocol: the fields say how predictions are made and scored")


@dataclass(frozen=True)
class Protocol:
    name: str
    batch_size: Optional[int]  # None: the config's optim.batch_size (ours batches only for speed)
    centre_crop: bool  # score on the reference's resized, centre-cropped view instead of the original size
    batch_statistics: bool  # BatchNorm normalises with the test batch's statistics (train mode, restored after)
    per_batch_foreground: bool  # one inversion decision for the whole batch instead of one per image
    metric_prefix: str  # metrics are logged as <dataset>[.<prefix>].<metric>
    keeps_samples: bool  # the run keeps its first images' predictions (qualitative figures) under this protocol

    def dataset_key(self, dataset: str) -> str:
        """What this protocol's metrics and records of ``dataset`` are logged under (``duts_te``,
        ``duts_te.reference``)."""
        return f"{dataset}.{self.metric_prefix}" if self.metric_prefix else dataset


OURS = PROTOCOLS.register("ours")(Protocol(
    "ours", batch_size=None, centre_crop=False, batch_statistics=False, per_batch_foreground=False,
    metric_prefix="", keeps_samples=True))
REFERENCE = PROTOCOLS.register("reference")(Protocol(
    "reference", batch_size=8, centre_crop=True, batch_statistics=True, per_batch_foreground=True,
    metric_prefix="reference", keeps_samples=False))


def get_protocol(protocol: "str | Protocol") -> Protocol:
    """The registered protocol of that name (a ``Protocol`` is returned as it is); an unknown name is
    an ``UnknownNameError`` listing the registered ones."""
    return protocol if isinstance(protocol, Protocol) else PROTOCOLS.get(protocol)


def reference_view(image: "torch.Tensor", size: int) -> "torch.Tensor":
    """(C, H, W) resized so that its shorter side is ``size`` (bilinear), then centre-cropped to
    size × size, as the reference's evaluation transform (torchvision Resize(size) + CenterCrop)."""
    import torchvision.transforms.functional as TF  # torch: only where the reference's view is scored

    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def reference_mask(mask: "torch.Tensor", size: int) -> "torch.Tensor":
    """The ground truth (H, W) in the reference's view: resized bilinearly, ≥ 0.5, centre-cropped."""
    return reference_view(mask[None].float(), size)[0] >= 0.5


def reference_boxes(boxes: Optional[np.ndarray], height: int, width: int, size: int) -> Optional[np.ndarray]:
    """GT boxes (K, 4) mapped into the reference's view (same resize and crop), clipped to it; boxes
    left empty by the crop are dropped."""
    if boxes is None:
        return None
    # torchvision's Resize(int): the shorter side becomes size, the longer int(size · long / short)
    new_h, new_w = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # as torchvision's crop
    scaled = np.asarray(boxes, dtype=np.float64) * [new_w / width, new_h / height, new_w / width, new_h / height]
    moved = np.clip(scaled - [left, top, left, top], 0, size)
    return moved[(moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])]
