"""KV cache sizes: the bytes of cached arrays and the default memory budget."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Share of the memory still free at startup given to *idle* resident caches. The rest
# must hold model weights loaded later, live requests' KV (admitted via reserve()),
# activations, and the other processes on the machine; a quarter keeps all of that
# safe, and LRU spill-to-disk makes a modest budget cheap (an evicted session comes
# back from disk instead of being recomputed).
DEFAULT_BUDGET_FRACTION = 0.25
# Below this the cache holds barely one long conversation of a small model.
MIN_BUDGET_BYTES = 64 << 20
# Used when neither the device nor the OS tells us how much memory there is.
FALLBACK_BUDGET_BYTES = 1 << 30
MEMINFO = Path("/proc/meminfo")
KIB = 1024


def kv_nbytes(layers: Iterable[tuple[Any, Any]]) -> int:
    """Actual bytes of per-layer (keys, values) arrays (anything with `.nbytes`)."""
    return sum(int(k.nbytes) + int(v.nbytes) for k, v in layers)


def meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux): free + reclaimable page cache."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _device_free_memory() -> int | None:
    """Free memory of MLX's default GPU device (Metal or CUDA); None on CPU."""
    try:
        import mlx.core as mx

        if mx.default_device().type != mx.DeviceType.gpu:
            return None
        info = mx.device_info()
        active = int(mx.get_active_memory())
    except Exception:  # noqa: BLE001 - any backend quirk just means "unknown"
        logger.debug("device memory query failed", exc_info=True)
        return None
    if isinstance(info.get("free_memory"), int):  # CUDA reports free memory (NVML)
        return int(info["free_memory"])
    # Metal: the recommended working set is what the GPU can use without paging.
    for key in ("max_recommended_working_set_size", "total_memory", "memory_size"):
        value = info.get(key)
        if isinstance(value, int) and value > 0:
            return max(value - active, 0)
    return None


def default_budget_bytes(fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """Budget for resident KV caches: `fraction` of the memory free right now."""
    free = _device_free_memory()
    source = "device"
    if free is None:
        free = meminfo_available()
        source = "MemAvailable"
    if free is None:
        logger.warning("cannot read free memory; KV budget falls back to %d bytes",
                       FALLBACK_BUDGET_BYTES)
        return FALLBACK_BUDGET_BYTES
    budget = max(int(free * fraction), MIN_BUDGET_BYTES)
    logger.info("KV cache budget %.1f MiB (%.0f%% of %s %.1f MiB)",
                budget / (1 << 20), fraction * 100, source, free / (1 << 20))
    return budget


# What a sequence is assumed to hold when the batch limit is derived from memory: a chat
# turn with its history. Admission still checks each request's own size against the budget.
TYPICAL_SEQUENCE_TOKENS = 2048
MIN_BATCH = 8
# 128: on an H200 (8B) 128 streams decoding together beat two waves of 64 once batched
# decode attention and short prefills stopped falling back to MLX's slow paths (the GPU
# wing), and a request arriving while 64 decode then finds a free row at once instead of
# waiting for one to end (bench/results/gpu-serving-128.md; the earlier cap of 64 came
# from bench/results/gpu-batch-from-memory.md, measured before the wing).
MAX_BATCH_GPU = 128
MAX_BATCH_CPU = 32


def batch_from_memory(budget_bytes: int, bytes_per_token: int, context_length: int,
                      on_gpu: bool) -> int:
    """Most sequences to decode together: those of min(context, TYPICAL_SEQUENCE_TOKENS)
    tokens that `budget_bytes` of KV cache holds, within [MIN_BATCH, the device's cap]."""
    tokens = max(1, min(context_length, TYPICAL_SEQUENCE_TOKENS))
    fits = budget_bytes // max(1, bytes_per_token * tokens)
    return int(min(max(fits, MIN_BATCH), MAX_BATCH_GPU if on_gpu else MAX_BATCH_CPU))
