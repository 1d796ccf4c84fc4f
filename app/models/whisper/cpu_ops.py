"""numpy kernels for the two ops MLX runs slowly on x86 CPUs: exp-heavy softmax and GELU.

MLX's CPU backend evaluates exp/erf one scalar at a time (mx.exp: ~12 ns per float32
here, mx.erf ~30 ns) while numpy's SIMD exp takes ~0.5 ns. The encoder does 54M
softmax exps and 10M GELUs per 30 s window, so on the CPU these run in numpy, in place
on the MLX result buffers (no copies); matmuls stay in MLX. numpy's own BLAS is avoided
here: its thread pool spinning next to MLX's OpenBLAS pool doubled the CPU time.
Everywhere else (Metal, CUDA) MLX's own ops are used.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np

from app.models.cpu_kernels import softmax_numpy_ as softmax_

logger = logging.getLogger(__name__)

# Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) e^{-z^2}, t = 1/(1 + p z),
# |error| < 1.5e-7 for z >= 0; only mul/add/div/exp, all SIMD in numpy.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_INV_SQRT2 = 0.7071067811865476
# Work in blocks so numpy's successive passes hit the cache, not memory (64 KB for GELU's
# ~20 passes measured fastest here; the softmax's blocks are set in cpu_kernels).
GELU_BLOCK_FLOATS = 1 << 14
QUERY_BLOCK = 256  # attention query rows per block


def use_numpy_kernels() -> bool:
    return mx.default_device() == mx.cpu


def _writable_view(x: mx.array) -> np.ndarray | None:
    """numpy view of an evaluated array's own buffer, when it may be edited in place.

    Only fresh results (matmul outputs) are passed here; a strided or read-only view
    (a broadcast or slice of something else) is refused and the caller falls back.
    """
    mx.eval(x)
    a = np.asarray(x)
    if a.dtype != np.float32 or not (a.flags.c_contiguous and a.flags.writeable):
        return None
    return a


def gelu_(x: mx.array) -> mx.array:
    """Exact (erf) GELU in place: x * Phi(x), Phi from the A&S tail of |x| for both signs."""
    a = _writable_view(x)
    if a is None:
        return mx.array(_gelu_np(np.asarray(x, dtype=np.float32)))
    flat = a.reshape(-1)
    for start in range(0, flat.size, GELU_BLOCK_FLOATS):
        block = flat[start : start + GELU_BLOCK_FLOATS]
        block[...] = _gelu_np(block)
    return x


def _gelu_np(a: np.ndarray) -> np.ndarray:
    z = np.abs(a) * np.float32(_INV_SQRT2)
    t = np.float32(_AS_P) * z
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.float32(_AS_A[4]) * t
    for coef in reversed(_AS_A[:4]):
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


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale) v for [B, H, T, D]: MLX matmuls, numpy softmax in between.

    Long query axes go in blocks: the encoder's full 6x1500x1500 scores (54 MB) made
    every softmax pass a trip to memory; 256-row blocks halved the attention time here.
    """
    q = q * scale
    if q.shape[2] <= QUERY_BLOCK:
        return softmax_(q @ k.transpose(0, 1, 3, 2)) @ v
    k_t = mx.contiguous(k.transpose(0, 1, 3, 2))
    v = mx.contiguous(v)
    blocks = []
    for start in range(0, q.shape[2], QUERY_BLOCK):
        out = softmax_(q[:, :, start : start + QUERY_BLOCK] @ k_t) @ v
        mx.eval(out)  # frees this block's scores before the next block's
        blocks.append(out)
    return mx.concatenate(blocks, axis=2)


class Projection:
    """Logits through a transposed copy of the tied embedding, [d, vocab] row-major.

    MLX's matmul of a few rows against the [vocab, d] embedding transposed on the fly
    ran at 8-9 ms for tiny here; against a contiguous [d, vocab] copy, 6-7 ms.
    """

    def __init__(self, embedding: mx.array) -> None:
        self.weight_t = mx.contiguous(embedding.T)
        mx.eval(self.weight_t)

    def __call__(self, hidden: mx.array) -> np.ndarray:
        logits = hidden.reshape(-1, self.weight_t.shape[0]) @ self.weight_t
        return np.array(logits, dtype=np.float32)
