"""Where a training runs and how its random streams start: the device a config's ``device`` names, and
one seed for Python's, NumPy's and torch's generators (the loop reseeds them every epoch)."""
from __future__ import annotations

import random

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
