"""How a trained model is scored: the evaluation protocols, each a small declarative ``Protocol``.

A config names the protocols its cells are scored under (``eval_protocols: [ours, reference]``); each
adds its own metrics to the run (``Protocol.dataset_key``). The evaluation code reads what to do from
the protocol's fields, never from its name. Torch-free: configs are validated against this registry
before torch is imported (``segtricks.spec.registry.registered_names``).

- ``ours`` (SPEC §7): predictions at the configured size, each soft mask resized to its ground truth's
  original size; BatchNorm with its running statistics; foreground chosen per image.
- ``reference`` (SPEC §8.2–8.4, to compare with the paper's tables): image, ground truth and boxes
  resized (shorter side = the configured size) and centre-cropped to a square, metrics on the crop;
  batches of 8 with BatchNorm normalising by the test batch's statistics; one inversion decision per
  batch. Precomputed maps get the same crop (BatchNorm and inversion do not apply to them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from segtricks.spec.registry import Registry

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
