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


def pair_table(results: dict[str, dict[str, list[float]]], first: str, second: str,
               labels: tuple[str, str]) -> list[str]:
    """Markdown rows of the median of `first` and `second` per case, and their ratio
    (milliseconds per repetition in, as the micro benchmarks collect them)."""
    lines = [f"| case | {labels[0]} | {labels[1]} | {labels[0]} / {labels[1]} |",
             "|---|---|---|---|"]
    for name, r in results.items():
        a, b = statistics.median(r[first]), statistics.median(r[second])
        lines.append(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    return lines
