"""numpy kernels for the two ops MLX runs slowly on x86 CPUs: exp-heavy softmax and GELU.

MLX's CPU backend evaluates exp/erf one scalar at a time (mx.exp: ~12 ns per float32
here, mx.erf ~30 ns) while numpy's SIMD exp takes ~0.5 ns. The encoder does 54M
softmax exps and 10M GELUs per 30 s window, so on the CPU these run in numpy on
zero-copy views of the MLX buffers; everywhere else (Metal, CUDA) MLX's ops are used.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np

logger = logging.getLogger(__name__)

# Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) e^{-z^2}, t = 1/(1 + p z),
# |error| < 1.5e-7 for z >= 0; only mul/add/div/exp, all SIMD in numpy.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_INV_SQRT2 = 0.7071067811865476


def use_numpy_kernels() -> bool:
    return mx.default_device() == mx.cpu


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU; x * Phi(x) with Phi from the A&S tail so both signs share one pass."""
    a = np.asarray(x, dtype=np.float32)
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
    return mx.array(poly)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, causal: bool) -> mx.array:
    """softmax(q k^T * scale [+ causal mask]) v for [B, H, T, D] arrays, in numpy."""
    qn = np.asarray(q, dtype=np.float32) * np.float32(scale)
    kn = np.asarray(k, dtype=np.float32)
    vn = np.asarray(v, dtype=np.float32)
    scores = np.matmul(qn, kn.swapaxes(-1, -2))
    if causal:
        t, s = scores.shape[-2:]
        scores[..., np.triu(np.ones((t, s), dtype=bool), k=s - t + 1)] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= np.reciprocal(scores.sum(axis=-1, keepdims=True))
    return mx.array(np.matmul(scores, vn))
