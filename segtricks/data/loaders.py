"""Data loaders: how many worker processes, what the device wants of them, and seeds that make the
augmented images independent of both.

``data.num_workers: auto`` (the default) resolves to the CPUs this process may use, less the one that
runs the model, at most ``MAX_AUTO_WORKERS``. "May use" is the affinity mask (which Slurm's task
plugins and cgroup cpusets narrow) and, under Slurm, ``$SLURM_CPUS_PER_TASK`` (a cluster without CPU
binding still allots only that many). An explicit number above what the process may use is lowered to
it, said once: more workers than CPUs only contend, and it is what made PyTorch warn ("This
DataLoader will create 4 worker processes in total. Our suggested max number of worker in current
system is 2").

On CUDA the loaders pin memory (asynchronous host-to-device copies), keep their workers between
epochs and prefetch 4 batches per worker.

Each training image is augmented from its own seed, drawn with the epoch's shuffle from the epoch's
seed (``EpochSampler``), so that the images of a training do not depend on how many workers load
them or whether they persist: the same config trains the same model on a laptop and on a
32-core node, and a resumed training sees the epochs an uninterrupted one would.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

MAX_AUTO_WORKERS = 8  # decoding + augmenting a 400×300 JPEG takes ~10 ms: 8 workers feed ~800 images/s
AUTO = "auto"
_said: set = set()  # lines said once per process


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, and the Slurm allocation when there is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    return max(cpus, 1)


def resolve_workers(setting: int | str) -> int:
    """Worker processes for ``data.num_workers`` (a number or ``auto``), never more than the CPUs
    this process may use minus one (the model's)."""
    limit = usable_cpus() - 1
    if setting == AUTO:
        return max(0, min(limit, MAX_AUTO_WORKERS))
    if setting > max(limit, 0):
        line = (f"data.num_workers {setting}: this process may use {limit + 1} CPU(s), so data loading uses "
                f"{max(limit, 0)} worker process(es)")
        if line not in _said:
            _said.add(line)
            tqdm.write(line)
        return max(limit, 0)
    return setting


class EpochSampler(Sampler[Tuple[int, int]]):
    """One epoch's shuffled indices, each with the seed its augmentation draws from. Set ``seed`` to
    the epoch's seed before each epoch (as ``DistributedSampler.set_epoch``): the sampler runs in the
    main process, so this holds with persistent workers too."""

    def __init__(self, n: int) -> None:
        self.n, self.seed = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.n, generator=generator).tolist()
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=generator).tolist()
        return iter(zip(order, seeds))


def data_loader(dataset: Dataset, batch_size: int, workers: int | str, device: torch.device,
                collate: Callable, sampler: Optional[Sampler] = None, persistent: bool = False) -> DataLoader:
    """A loader with ``resolve_workers(workers)`` processes; on CUDA pinned and prefetching, and with
    ``persistent`` (the training loader, read every epoch) its workers kept between epochs. A loader
    read once (an evaluation, each epoch's validation) lets its workers go when it is done: kept, they
    would sit beside the training loader's for the whole training."""
    n = resolve_workers(workers)
    cuda = device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=n, collate_fn=collate,
                      pin_memory=cuda, persistent_workers=persistent and cuda and n > 0,
                      prefetch_factor=4 if cuda and n > 0 else None)
