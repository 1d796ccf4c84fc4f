"""Process settings for MLX on a Linux CPU, applied before OpenBLAS and MLX load.

Measured problems on a small shared CPU (2 cores here), all outside MLX's control:

- glibc hands large freed blocks straight back to the kernel (mmap threshold, heap trim),
  so every big MLX temporary of a prefill (attention scores, MLP activations) is page-
  faulted in again on its next allocation: a fused softmax over 4.7M scores took 21 ns per
  element that way and 5.6 ns with the thresholds raised (bench/results/micro-cpu-kernels.md).
  Freed memory now stays in the process for reuse; the peak is bounded by what the largest
  step allocates anyway.
- glibc gives each thread that allocates an arena of its own, and the idle release's
  malloc_trim (app/engine/memory.py) returns free memory at the top of the main heap but
  not at the top of a per-thread arena's heap: with the engine thread, the C kernels'
  workers and numpy each holding one, an idle server's RSS swung by ~60 MB from one idle
  moment to the next (tests/e2e/test_load.py). One arena keeps it flat; the engine thread
  makes nearly all the large allocations, so the shared lock costs little.
- OpenBLAS's worker threads spin ~0.1 s (2^28 cycles) after each call before sleeping. A
  decode step calls sgemm ~200 times, so the spinning never stops and takes the core the
  HTTP event loop and the engine thread need; 8-stream aggregate throughput rose ~20% with a
  short spin (OPENBLAS_THREAD_TIMEOUT, read once when OpenBLAS loads).

These are defaults: an explicit environment value (OPENBLAS_THREAD_TIMEOUT, MALLOC_ARENA_MAX)
wins, MLXD_CPU_TUNING=0 turns this off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

ENV_DISABLE = "MLXD_CPU_TUNING"
# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# glibc caps the mmap threshold at 32 MiB on 64-bit (HEAP_MAX_SIZE / 2); blocks above it
# are mmapped regardless. Trim only when more than 1 GiB sits free at the top of the heap.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30
# OpenBLAS spins 2^N cycles before sleeping (clamped by OpenBLAS to 4..30; default 28).
# 2^18 cycles is ~0.1 ms: long enough to bridge the gap between the sgemm calls of one
# forward pass, short enough to yield the core between engine steps.
OPENBLAS_SPIN_ENV = "OPENBLAS_THREAD_TIMEOUT"
OPENBLAS_SPIN_LOG2_CYCLES = "18"

_applied: dict[str, str] | None = None


def configure() -> dict[str, str]:
    """Apply the settings once (Linux only); returns what was set, for the start-up log."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if not sys.platform.startswith("linux") or os.environ.get(ENV_DISABLE) == "0":
        return _applied
    if "mlx.core" in sys.modules:
        logger.warning("process.configure() after mlx.core was imported: OpenBLAS may "
                       "already be loaded with its default spin")
    os.environ.setdefault(OPENBLAS_SPIN_ENV, OPENBLAS_SPIN_LOG2_CYCLES)
    _applied[OPENBLAS_SPIN_ENV] = os.environ[OPENBLAS_SPIN_ENV]
    if _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and \
            _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) and \
            ("MALLOC_ARENA_MAX" in os.environ or _mallopt(M_ARENA_MAX, 1)):
        _applied["malloc"] = (f"mmap>{MMAP_THRESHOLD_BYTES >> 20}MiB "
                              f"trim>{TRIM_THRESHOLD_BYTES >> 30}GiB arenas=1")
    return _applied


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt; False where the C library has none (musl) or refuses the value."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(param, value))
    except (OSError, AttributeError):
        return False
