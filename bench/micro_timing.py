"""Timing of in-process MLX work for the micro benchmarks (mlx imported by the caller)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx


def timed(fn: Callable[[], Any], reps: int = 5) -> float:
    """Median seconds of `mx.eval(fn())` over `reps` runs, after one warm-up run (a result
    that is not an MLX array, such as numpy's or None, passes through mx.eval)."""
    mx.eval(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
