"""The CPU thread policy: phases made of many small tensor operations run on one torch thread.

Per-image post-processing (GF, BF) and metrics issue hundreds of operations on tensors of a few
hundred kilobytes. With two or more intra-op threads each of them pays a thread hand-off, and on a
host whose cores are shared (CI, a busy workstation) the hand-offs wait for descheduled threads:
measured on 2 shared cores, a 48-image evaluation took 22 s at 2 threads and 13 s at 1, and a
bilateral solve 20× longer at 2 threads than at 1. The model's forward and backward passes (large
convolutions and matrix products) keep every thread: they scale with cores.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_thread(on_cpu: bool = True) -> Iterator[None]:
    """Torch on one intra-op thread inside the block (only when ``on_cpu``); restored afterwards."""
    if not on_cpu:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
