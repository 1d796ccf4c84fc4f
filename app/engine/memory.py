"""Giving memory back when the engine goes idle.

MLX keeps freed buffers in its own cache for reuse, and glibc keeps freed heap pages in its
arenas; a burst of requests of varying shapes leaves both holding memory that the next
burst may never need in those sizes. Once the engine has been idle for a moment, both are
returned to the operating system, so a server's resident size follows its load instead of
ratcheting up with every new batch shape.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import mlx.core as mx

logger = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


class IdleRelease:
    """Releases cached memory once per idle period: `busy()` after any work, `idle()` when
    the engine found nothing to do for a while."""

    def __init__(self) -> None:
        self._held = False

    def busy(self) -> None:
        self._held = True

    def idle(self) -> None:
        if not self._held:
            return
        self._held = False
        cached = mx.get_cache_memory()
        mx.clear_cache()
        if _TRIM is not None:
            _TRIM(0)
        logger.debug("idle: released %d bytes of MLX buffer cache and trimmed the heap", cached)
