"""Fresh MLX arrays for the C kernels to write their results into.

A kernel's result handed back as `mx.array(numpy_result)` costs a copy and leaves a numpy
block on the engine thread's heap for every call; written straight into an MLX buffer it
costs neither, and the buffer returns to MLX's cache (released when the engine idles)
like any other result.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def output(shape: tuple[int, ...]) -> tuple[mx.array | None, np.ndarray]:
    """An evaluated float32 MLX array of `shape` and a writable numpy view of its memory;
    (None, a numpy array) where MLX's buffer cannot be written (then `result` copies)."""
    out = mx.zeros(shape, dtype=mx.float32)
    mx.eval(out)
    view = np.asarray(out)
    if not (view.flags.writeable and view.flags.c_contiguous):
        return None, np.empty(shape, np.float32)
    return out, view


def result(out: mx.array | None, view: np.ndarray) -> mx.array:
    """The MLX array holding what was written into `view` (see `output`)."""
    return out if out is not None else mx.array(view)
