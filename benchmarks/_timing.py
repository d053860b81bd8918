"""Timing shared by the benchmarks (each runs as ``python benchmarks/<name>.py``, so this directory
is on ``sys.path``)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def best_time(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """(fastest wall time of ``repeats`` calls of ``fn`` in seconds, the last call's result)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out
