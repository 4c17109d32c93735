"""Where a training runs and how its random streams start: the device a config's ``device`` names, and
one seed for Python's, NumPy's and torch's generators (the loop reseeds them every epoch)."""
from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name as torch spells it (``cpu``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
