"""Data loaders: worker counts that fit the CPUs this process may use, and training images that do not
depend on how many workers load them."""
import warnings

import pytest
import torch

from segtricks.data import loaders
from segtricks.config.schema import DatasetRef
from segtricks.data.datasets import build_dataset
from segtricks.data.loaders import EpochSampler, data_loader, resolve_workers
from segtricks.data.views import TrainView


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may run on ``n`` CPUs."""
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(loaders, "_said", set())

    def set_cpus(n):
        monkeypatch.setattr(loaders.os, "sched_getaffinity", lambda pid: set(range(n)))
    return set_cpus


@pytest.mark.parametrize("n, workers", [(1, 0), (2, 1), (4, 3), (64, loaders.MAX_AUTO_WORKERS)])
def test_auto_is_the_usable_cpus_less_one_capped(cpus, n, workers):
    cpus(n)
    assert resolve_workers("auto") == workers


def test_the_slurm_allocation_narrows_auto(cpus, monkeypatch):
    cpus(32)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert resolve_workers("auto") == 3


def test_an_explicit_count_above_the_cpus_is_lowered_and_said_once(cpus, capsys):
    cpus(2)
    assert resolve_workers(4) == 1 and resolve_workers(4) == 1
    out = capsys.readouterr().out
    assert out.count("data.num_workers 4: this process may use 2 CPU(s), so data loading uses 1 worker") == 1
    assert resolve_workers(0) == 0 and resolve_workers(1) == 1


def batches(workers, seed):
    raw = build_dataset(DatasetRef("synthetic", split="train", limit=12))
    view = TrainView(raw, 32, 36)
    sampler = EpochSampler(len(view))
    sampler.seed = seed
    loader = data_loader(view, 4, workers, torch.device("cpu"), TrainView.collate, sampler=sampler)
    return list(loader)


def test_training_images_do_not_depend_on_the_number_of_workers(cpus):
    cpus(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's "will create N worker processes" warning included
        in_process, two_workers, three_workers = batches(0, 7), batches(2, 7), batches(3, 7)
    assert len(in_process) == 3
    for a, b, c in zip(in_process, two_workers, three_workers):
        assert torch.equal(a, b) and torch.equal(a, c)
    other_epoch = batches(0, 8)
    assert not all(torch.equal(a, b) for a, b in zip(in_process, other_epoch))


def test_more_workers_than_cpus_print_no_pytorch_warning(cpus):
    cpus(2)  # what made PyTorch warn: 4 workers where 2 CPUs may be used
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(batches(4, 0)) == 3


def test_on_cuda_loaders_pin_persist_and_prefetch(cpus):
    """The CUDA branch, checked on CPU: the loader is only configured here, never iterated."""
    cpus(4)
    view = TrainView(build_dataset(DatasetRef("synthetic", split="train", limit=4)), 32, 36)
    cuda = data_loader(view, 2, "auto", torch.device("cuda"), TrainView.collate, sampler=EpochSampler(4),
                       persistent=True)
    assert (cuda.num_workers, cuda.pin_memory, cuda.persistent_workers, cuda.prefetch_factor) == (3, True, True, 4)
    cpu = data_loader(view, 2, "auto", torch.device("cpu"), TrainView.collate, sampler=EpochSampler(4))
    assert (cpu.pin_memory, cpu.persistent_workers) == (False, False)
    # issue 34: a loader read once (evaluation, each epoch's validation) lets its workers go
    once = data_loader(view, 2, "auto", torch.device("cuda"), TrainView.collate)
    assert (once.pin_memory, once.persistent_workers) == (True, False)


def test_evaluation_batches_pin_the_images_the_model_reads(monkeypatch):
    """Issue 34 defect 4: ``EvalBatch`` had no ``pin_memory``, so a pinning loader left it pageable and
    every copy to the GPU was synchronous. ``torch.utils.data`` calls the method when the batch has one."""
    from torch.utils.data._utils.pin_memory import pin_memory
    from segtricks.data.views import EvalView
    view = EvalView(build_dataset(DatasetRef("synthetic", split="test", limit=2)), 32)
    batch = view.collate([view[0], view[1]])
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a: pinned.append(t) or t.clone())  # no GPU here
    out = pin_memory(batch)  # what the loader's pinning thread does with each batch
    assert type(out) is type(batch) and out.ids == batch.ids
    assert len(pinned) == 1 and pinned[0] is batch.images and torch.equal(out.images, batch.images)
    assert out.originals is batch.originals and out.masks is batch.masks  # the metrics' inputs stay put
