"""Where a training runs, at which precision, and how its random streams start: the device a config's
``device`` names, the one precision rule for that device (``precision_of``), and one seed for Python's,
NumPy's and torch's generators (the loop reseeds them every epoch)."""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import ContextManager, Optional

import numpy as np
import torch

from segtricks.errors import BadInput


class DeviceError(BadInput):
    """A device that this machine does not have, or a name torch does not know."""


def resolve_device(name: str, what: str = "--device") -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name as torch spells it (``cpu``, ``cuda:1``).
    A device this machine lacks is a ``DeviceError`` naming ``what`` asked for it (the flag, or the
    config key), before anything runs on it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{what} {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{what} {name}: this machine has no CUDA device (torch sees none); use auto or cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{what} {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type not in ("cpu", "mps") or device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{what} {name}: not available here; use auto, cpu or cuda")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Precision:
    """How the model (backbone and head) runs on a device, in training, validation, evaluation, the
    backbone-keys cache and ``segment`` alike: ``name`` (how runs are tagged and caches keyed), the
    autocast dtype (None: float32, no autocast), and whether training scales its loss (float16's
    narrow range underflows small gradients; bfloat16's does not)."""

    name: str
    dtype: Optional[torch.dtype]

    @property
    def scales_loss(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self, device_type: str) -> ContextManager:
        """The model's region: autocast to ``dtype``, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)


FP32 = Precision("fp32", None)
BF16 = Precision("bf16", torch.bfloat16)
FP16 = Precision("fp16", torch.float16)


def precision_of(device: torch.device) -> Precision:
    """The precision rule: bf16 on a CUDA card that computes it natively (Ampere, sm_80, and later);
    fp16 with loss scaling on older cards (T4, RTX 20xx, V100), where bf16 is only emulated (slow) or
    refused by cuDNN (``torch.cuda.is_bf16_supported()`` alone says yes to emulation); fp32 on the
    CPU, where oneDNN's bf16 kernels without native support made a training step 40× slower."""
    if device.type != "cuda":
        return FP32
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        return BF16 if torch.cuda.is_bf16_supported(including_emulation=False) else FP16
