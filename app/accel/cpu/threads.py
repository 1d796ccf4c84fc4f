"""One small thread pool for numpy work split across the CPU's cores.

MLX's CPU backend runs each elementwise op on one thread, and numpy does too; OpenBLAS
alone uses every core. Numpy releases the GIL inside its ufunc loops and BLAS calls, so
independent slices of one big elementwise job (the Whisper encoder's softmax and GELU)
or of one few-row matmul (app/accel/cpu/panels.py) run in parallel on these threads.
Only numpy buffers reach them; every MLX object stays on the engine thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

MAX_WORKERS = 8

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None


def workers() -> int:
    """Threads a job is split over: the cores this process may run on (at most 8)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; macOS has only cpu_count
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))


def run_parts(fn: Callable[[T], object], parts: Sequence[T]) -> None:
    """fn(part) for every part (results dropped), the first on the calling thread and the
    rest on the pool; returns when all are done (re-raising the first error)."""
    if len(parts) == 1:
        fn(parts[0])
        return
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(workers(), thread_name_prefix="mlxd-cpu")
    futures = [_pool.submit(fn, part) for part in parts[1:]]
    try:
        fn(parts[0])
    finally:
        for f in futures:
            f.result()


def split_range(n: int, pieces: int | None = None) -> list[tuple[int, int]]:
    """[0, n) cut into at most `pieces` (default: workers()) near-equal non-empty ranges."""
    k = max(1, min(pieces or workers(), n))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
