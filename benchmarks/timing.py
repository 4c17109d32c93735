"""One wall-clock measurement, shared by the benchmark scripts (run as ``python benchmarks/X.py``)."""
from __future__ import annotations

import time
from typing import Callable


def ms(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3
