"""Interleaved timings shared by the benchmark scripts (run as ``python benchmarks/X.py``)."""
from __future__ import annotations

from typing import Callable, Dict, List

from torch.utils.benchmark import Timer


def interleaved_ms(cases: Dict[str, Callable[[], object]], rounds: int, threads: int) -> Dict[str, List[float]]:
    """Milliseconds of one call of each of ``cases`` per round, at ``threads`` torch threads.

    Each round times every case once, in turn, in reverse order every other round, so that a change of
    machine load hits them all alike. Each timing is ``torch.utils.benchmark.Timer.timeit(1)``: the
    thread count is set for it (and restored), and two untimed calls warm the case up first, so it
    never pays for the caches another case left cold.
    """
    timers = {name: Timer("fn()", globals={"fn": fn}, num_threads=threads) for name, fn in cases.items()}
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for round_ in range(rounds):
        for name, timer in list(timers.items())[::1 if round_ % 2 else -1]:
            times[name].append(timer.timeit(1).raw_times[0] * 1e3)
    return times
