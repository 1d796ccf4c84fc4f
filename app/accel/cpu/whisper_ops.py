"""Whisper's ops on an x86 CPU: GELU in numpy, blocked attention, panel logits projection.

MLX's CPU backend evaluates erf/exp one scalar at a time (mx.erf ~30 ns per float32
here) while numpy's SIMD exp takes ~0.5 ns. The encoder runs ~10M GELUs per 30 s window,
so on the CPU they run in numpy, in place on the MLX result buffers (no copies), split
over the cores (app/accel/cpu/threads.py); the encoder's matmuls stay in MLX. Attention,
the encoder's 54M-score softmax included, goes through app/accel/cpu/kernels.py, which
hands big score blocks to numpy the same way. Decode steps run in numpy altogether
(whisper_decoder.py). Everywhere else (Metal, CUDA) MLX's own ops are used
(app/models/whisper/ops.py).
"""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np

from app.accel.cpu import kernels
from app.accel.cpu.kernels import AS_A, AS_P, INV_SQRT2, writable_view
from app.accel.cpu.panels import PanelMatmul
from app.accel.cpu.threads import run_parts, split_range

logger = logging.getLogger(__name__)

# Work in blocks so numpy's successive passes hit the cache, not memory (64 KB for GELU's
# ~20 passes measured fastest here; the softmax's blocks are set in cpu_kernels).
GELU_BLOCK_FLOATS = 1 << 14
# The encoder's GELUs go to numpy (SIMD exp, in place, worth the sync); a decode step's
# few rows stay in one MLX graph with the polynomial-exp kernels: no sync per layer.
NUMPY_GELU_MIN = 1 << 16  # elements


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU: in numpy for big arrays, the polynomial MLX kernel for small."""
    return gelu_(x) if x.size >= NUMPY_GELU_MIN else kernels.gelu(x)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
              mask: mx.array | str | None) -> mx.array:
    # the encoder's 1500x1500 scores take numpy's softmax in blocks, decode steps stay in MLX
    return kernels.attention(q, k, v, None, scale, mask)


def gelu_(x: mx.array) -> mx.array:
    """Exact (erf) GELU in place: x * Phi(x), Phi from the A&S tail of |x| for both signs
    (Abramowitz & Stegun 7.1.26, as cpu_kernels.gelu; every step SIMD in numpy)."""
    a = writable_view(x)
    if a is None:
        return mx.array(gelu_np(np.asarray(x, dtype=np.float32)))
    flat = a.reshape(-1)
    run_parts(lambda r: _gelu_blocks_(flat[r[0] : r[1]]), split_range(flat.size))
    return x


def _gelu_blocks_(flat: np.ndarray) -> None:
    for start in range(0, flat.size, GELU_BLOCK_FLOATS):
        block = flat[start : start + GELU_BLOCK_FLOATS]
        block[...] = gelu_np(block)


def gelu_np(a: np.ndarray) -> np.ndarray:
    z = np.abs(a) * np.float32(INV_SQRT2)
    t = np.float32(AS_P) * z
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.float32(AS_A[4]) * t
    for coef in reversed(AS_A[:4]):
        poly += np.float32(coef)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z
    poly *= 0.5  # upper tail 1 - Phi(|x|)
    np.subtract(1.0, poly, out=poly, where=a >= 0)
    poly *= a
    return poly


class Projection:
    """Logits through the tied embedding, stored as column panels of its transpose
    (app/accel/cpu/panels.py): 5 beam rows by tiny.en's [384, 51864] took ~10 ms
    through one sgemm here, ~5 ms in panels on 2 threads."""

    # panels sized for 5 rows: beam_size and best_of default to 5
    MAX_ROWS = 5

    def __init__(self, embedding: mx.array) -> None:
        self.matmul = PanelMatmul(np.asarray(embedding, dtype=np.float32).T,
                                  max_rows=self.MAX_ROWS)

    def __call__(self, hidden: mx.array) -> np.ndarray:
        rows = np.asarray(hidden, dtype=np.float32).reshape(-1, self.matmul.n_in)
        return self.matmul(rows)
