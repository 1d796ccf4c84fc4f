"""Faster exp-based kernels for float32 transformers on MLX's CPU backend.

MLX's CPU backend evaluates `exp` (and so softmax, sigmoid, SiLU) one element at a time
through libm: ~13 ns per element on this machine, against 0.4 ns for a multiply and
0.6 ns for numpy's SIMD exp. In a prefill that is most of the non-matmul time: a 512-token
chunk over 1k cached tokens runs ~140M exps in attention's softmax and 24M in SwiGLU.

`fast_exp` is exp from multiplies and adds (Cody-Waite range reduction, a degree-6
polynomial, 2^n assembled in the exponent bits), which `mx.compile` fuses into one
generated loop: ~2-4 ns per element, relative error < 1e-7 (mx.exp's own is ~2e-6).
`softmax`, `swiglu`, `gelu` and `attention` are built on it, except that a long prefill's
attention hands its softmax to numpy in blocks (the sync is cheap next to that much work),
and with the C kernels a prefill's SwiGLU and (AVX-512) a single sequence's causal
prefill attention run in C instead (native/decode.c, native/prefill_attention.c).
Measurements: bench/results/micro-cpu-kernels.md.

`app/accel/cpu/mlx_lm_patch.py` routes mlx-lm's model modules to `attention` and
`swiglu`; Whisper gets `gelu` and `attention` through its ops (app/accel/choose.py).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import scaled_dot_product_attention as mlx_lm_attention

from app.accel.cpu import buffers, native
from app.accel.cpu.threads import run_parts, split_range, workers

logger = logging.getLogger(__name__)

# exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2].
LOG2E = 1.4426950408889634
LN2_HI = 0.693359375  # ln 2 split in two so n * LN2_HI is exact in float32
LN2_LO = -2.12194440e-4
# Taylor-like coefficients of (exp(r) - 1 - r) / r^2, minimax-fitted for float32.
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1)
# Below this exp underflows float32's normal range; clamping keeps 2^n constructible
# (the result, 1.6e-38, is zero for every sum it enters). Above MAX it overflows anyway.
EXP_MIN = -87.0
EXP_MAX = 88.0
# Adding then subtracting 1.5 * 2^23 rounds a float32 of magnitude < 2^22 to an integer
# with plain adds, which the generated loop vectorizes (floor() would call libm).
ROUND_MAGIC = 12582912.0
FLOAT32_EXPONENT_BIAS = 127
FLOAT32_MANTISSA_BITS = 23
# Masked attention scores: finite, so a fully masked row (left padding) stays a uniform
# row instead of NaN, matching MLX's own fallback.
MASKED = -1e30

# Prefill attention with at least this many scores per (sequence, kv head) group goes
# through numpy's SIMD exp in query-row blocks of about BLOCK_SCORES (16 MB: no temporary
# crosses glibc's 32 MB mmap threshold, above which every allocation is page-faulted in
# anew). The last 512-token chunk of a 4k prompt took 10.5 s with mlx-lm's attention,
# 14 s with the polynomial softmax unblocked, 3.6-4.0 s this way (SmolLM2-135M). The lazy
# MLX graph (mask, max, exp parts, sum: one single-threaded pass each) only wins for a few
# query rows: on an Intel model-167 box a 512-token chunk's attention took 133 ms a layer
# that way, 41 ms through mx.fast's, 11 ms through numpy; a decode row over 4k keys
# (12k scores) 1.4 ms against 2.4 ms through numpy.
NUMPY_ATTENTION_MIN_SCORES = 1 << 15
BLOCK_SCORES = 1 << 22
NUMPY_SOFTMAX_BLOCK = 1 << 18  # floats per numpy pass block (1 MB)
# Query rows per block of a causal prefill: smaller blocks skip more of the masked
# triangle but sync more often (bench/micro_cpu_kernels.py measures the choice).
CAUSAL_BLOCK_ROWS = 128
CAUSAL_TABLES = 64  # [rows, keys] tables kept: one per block of a chunk, all layers alike


@partial(mx.compile, shapeless=True)
def _exp_parts(x: mx.array, shift: mx.array) -> tuple[mx.array, mx.array]:
    """exp(x - shift) = poly * 2^n: the polynomial, and 2^n's float32 bits as int32."""
    x = mx.clip(x - shift, EXP_MIN, EXP_MAX)
    n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC  # round to nearest; floor() is a libm call
    r = x - n * LN2_HI - n * LN2_LO
    p = mx.array(EXP_POLY[0], dtype=x.dtype)
    for c in EXP_POLY[1:]:
        p = p * r + c
    p = p * r * r + r + 1.0
    return p, (n.astype(mx.int32) + FLOAT32_EXPONENT_BIAS) << FLOAT32_MANTISSA_BITS


# Compiled shapeless (one trace for every shape: batch and context sizes change each step),
# which rules out the bit-cast `view` inside; it follows outside, a zero-copy reinterpretation.
def fast_exp(x: mx.array) -> mx.array:
    """exp of a float32 array."""
    return _exp_shifted(x, mx.array(0.0, dtype=x.dtype))


def _exp_shifted(x: mx.array, shift: mx.array) -> mx.array:
    p, bits = _exp_parts(x, shift)
    return p * bits.view(mx.float32)


@partial(mx.compile, shapeless=True)
def _silu_times(gate: mx.array, exp_neg_gate: mx.array, x: mx.array) -> mx.array:
    return gate / (1.0 + exp_neg_gate) * x


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """silu(gate) * x, as mlx-lm's `swiglu`; a prefill's (at least NATIVE_SWIGLU_MIN
    floats) through the C kernel over the cores, where MLX's generated loop runs on one."""
    if gate.dtype != mx.float32:
        return gate * mx.sigmoid(gate) * x
    if gate.size >= NATIVE_SWIGLU_MIN and gate.shape == x.shape:
        out = _swiglu_native(gate, x)
        if out is not None:
            return out
    return _silu_times(gate, fast_exp(-gate), x)


NATIVE_SWIGLU_MIN = 1 << 16


def _swiglu_native(gate: mx.array, x: mx.array) -> mx.array | None:
    lib = native.library()
    if lib is None or x.dtype != mx.float32:
        return None
    mx.eval(gate, x)
    g, u = np.asarray(gate), np.asarray(x)
    if not (g.flags.c_contiguous and u.flags.c_contiguous):
        return None
    out, view = buffers.output(g.shape)
    lib.silu_mul_mt(g.ctypes.data, u.ctypes.data, g.size, view.ctypes.data,
                    lib.qmatmul_threads(workers()))
    return buffers.result(out, view)


# Abramowitz & Stegun 7.1.26: erf(z) = 1 - (a1 t + ... + a5 t^5) e^{-z^2}, t = 1/(1 + p z),
# |error| < 1.5e-7 for z >= 0: multiplies, adds, one divide and one exp.
AS_P = 0.3275911
AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
INV_SQRT2 = 0.7071067811865476


@partial(mx.compile, shapeless=True)
def _gelu_parts(x: mx.array) -> tuple[mx.array, mx.array]:
    """(-z^2, A&S polynomial of t) for z = |x| / sqrt(2)."""
    z = mx.abs(x) * INV_SQRT2
    t = 1.0 / (1.0 + AS_P * z)
    poly = mx.array(AS_A[4], dtype=x.dtype)
    for c in reversed(AS_A[:4]):
        poly = poly * t + c
    return -(z * z), poly * t


@partial(mx.compile, shapeless=True)
def _gelu_combine(x: mx.array, poly: mx.array, exp_neg_z2: mx.array) -> mx.array:
    tail = 0.5 * poly * exp_neg_z2  # 1 - Phi(|x|)
    return x * mx.where(x >= 0, 1.0 - tail, tail)


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, x * Phi(x), as nn.gelu; abs. error < 1e-7 * |x|."""
    if x.dtype != mx.float32:
        return x * (1 + mx.erf(x * INV_SQRT2)) / 2
    neg_z2, poly = _gelu_parts(x)
    return _gelu_combine(x, poly, fast_exp(neg_z2))


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis (float32)."""
    e = _exp_shifted(x, x.max(axis=-1, keepdims=True))
    return e * (1.0 / e.sum(axis=-1, keepdims=True))


def writable_view(x: mx.array) -> np.ndarray | None:
    """numpy view of an evaluated array's own buffer, when it may be edited in place.

    Only fresh results (matmul outputs) are passed here; a strided or read-only view
    (a broadcast or slice of something else) is refused and the caller falls back.
    """
    mx.eval(x)
    a = np.asarray(x)
    if a.dtype != np.float32 or not (a.flags.c_contiguous and a.flags.writeable):
        return None
    return a


def softmax_numpy_(scores: mx.array, add: np.ndarray | None = None) -> mx.array:
    """Softmax over the last axis computed in place in the evaluated MLX buffer (numpy's
    SIMD exp, ~0.6 ns per element; rows split over the cores, app/accel/cpu/threads.py);
    falls back to `softmax` for a view it may not edit. `add`: [L, S] added to every
    [L, S] matrix of the scores first (an additive mask)."""
    a = writable_view(scores)
    if a is None:
        if add is not None:
            scores = scores + mx.array(add)
        return softmax(scores)
    if add is None:
        rows = a.reshape(-1, a.shape[-1])
        run_parts(lambda r: _softmax_rows_(rows[r[0] : r[1]]), split_range(rows.shape[0]))
        return scores
    mats = a.reshape(-1, *add.shape)

    def part(r: tuple[int, int]) -> None:
        for m in mats[r[0] : r[1]]:
            m += add
            _softmax_rows_(m)

    run_parts(part, split_range(mats.shape[0]))
    return scores


_causal_cache: dict[tuple[int, int, int], np.ndarray] = {}


def _causal_table(first: int, rows: int, keys: int) -> np.ndarray:
    """[rows, keys]: 0 where query row i (at position first + i) may see key j, else
    MASKED; kept, since every layer of a prefill chunk asks for the same ones."""
    key = (first, rows, keys)
    table = _causal_cache.get(key)
    if table is None:
        visible = np.arange(keys)[None, :] <= first + np.arange(rows)[:, None]
        table = np.where(visible, np.float32(0), np.float32(MASKED)).astype(np.float32)
        if len(_causal_cache) >= CAUSAL_TABLES:
            _causal_cache.clear()
        _causal_cache[key] = table
    return table


def _softmax_rows_(rows: np.ndarray) -> None:
    step = max(1, NUMPY_SOFTMAX_BLOCK // rows.shape[-1])
    for start in range(0, rows.shape[0], step):
        softmax_np_(rows[start : start + step])


def softmax_np_(a: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of a float32 numpy array, in place; returns it."""
    a -= a.max(axis=-1, keepdims=True)
    np.exp(a, out=a)
    a *= np.reciprocal(a.sum(axis=-1, keepdims=True))
    return a


def _masked(scores: mx.array, mask: mx.array | str | None, rows: slice, s: int,
            length: int) -> mx.array:
    """scores [B, Hkv, rep, l, S] for query rows `rows` of `length`, with the mask applied."""
    if mask is None:
        return scores
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unsupported attention mask {mask!r}")
        first = s - length + (rows.start or 0)
        allowed = mx.arange(first, first + scores.shape[3])[:, None] >= mx.arange(s)[None]
        return mx.where(allowed, scores, MASKED)
    m = mask
    if m.ndim == 4:  # [B, 1|H, L, S] -> [B, Hkv|1, rep|1, L, S]
        b = m.shape[0]
        m = m.reshape(b, -1, 1, *m.shape[2:]) if m.shape[1] == 1 \
            else m.reshape(b, scores.shape[1], scores.shape[2], *m.shape[2:])
    if m.ndim >= 2 and m.shape[-2] == length:
        m = m[..., rows, :]
    return mx.where(m, scores, MASKED) if m.dtype == mx.bool_ else scores + m


def causal_prefill_native(queries: mx.array, keys: mx.array, values: mx.array,
                          scale: float) -> mx.array | None:
    """One sequence's causal prefill attention through native/prefill_attention.c (scores
    kept in registers, online softmax), or None where it does not apply (no AVX-512 build,
    a batch, a head size it does not take, a K/V layout it cannot read in place)."""
    lib = native.library()
    if lib is None or not lib.prefill_attention_available() or queries.shape[0] != 1:
        return None
    _, h, length, d = queries.shape
    hkv, s = keys.shape[1], keys.shape[2]
    if d % 16 or d > 256 or h % hkv or length > s:
        return None
    mx.eval(queries, keys, values)
    q = np.ascontiguousarray(np.asarray(queries[0]), dtype=np.float32)
    k, v = _heads_in_place(keys), _heads_in_place(values)
    if k is None or v is None or k.strides != v.strides:
        return None
    out, view = buffers.output((1, h, length, d))
    rc = lib.prefill_attend(q.ctypes.data, h, length, d, k.ctypes.data, v.ctypes.data,
                            k.strides[0] // 4, hkv, s, float(scale), view.ctypes.data,
                            lib.qmatmul_threads(workers()))
    if rc == -2:
        raise MemoryError("no memory for the prefill attention's key panel")
    if rc != 0:
        return None
    return buffers.result(out, view)


def _heads_in_place(x: mx.array) -> np.ndarray | None:
    """[Hkv, S, d] float32 numpy view of x [1, Hkv, S, d] whose rows are contiguous (a
    slice of the cache's buffer qualifies), or None."""
    a = np.asarray(x[0])
    if a.dtype != np.float32 or a.strides[2] != 4 or a.strides[1] != 4 * a.shape[2] or \
            a.strides[0] % 4:
        return None
    return a


def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any,
              scale: float, mask: mx.array | str | None, sinks: mx.array | None = None,
              ) -> mx.array:
    """Drop-in for mlx-lm's `scaled_dot_product_attention` (same arguments).

    queries [B, H, L, D]; keys/values [B, Hkv, S, D] with H a multiple of Hkv (grouped
    queries are folded into the rows of one matmul per kv head, never repeated in memory);
    mask None, "causal" (the last L of S positions), or a boolean/additive array that
    broadcasts to [B, 1|H, L, S].
    """
    if hasattr(cache, "bits") or sinks is not None or queries.dtype != mx.float32:
        return mlx_lm_attention(queries, keys, values, cache=cache, scale=scale,
                                mask=mask, sinks=sinks)  # type: ignore[arg-type]
    b, h, length, d = queries.shape
    hkv, s = keys.shape[1], keys.shape[2]
    rep = h // hkv
    q = (queries * scale).reshape(b, hkv, rep, length, d)
    keys_t = keys.swapaxes(-1, -2)
    if rep * length * s < NUMPY_ATTENTION_MIN_SCORES:
        # decode steps and short prefills: one lazy MLX graph, no sync
        scores = (q.reshape(b, hkv, rep * length, d) @ keys_t).reshape(b, hkv, rep, length, s)
        probs = softmax(_masked(scores, mask, slice(0, length), s, length))
        return (probs.reshape(b, hkv, rep * length, s) @ values).reshape(b, h, length, d)
    causal = isinstance(mask, str) and mask == "causal"
    if causal:
        out = causal_prefill_native(queries, keys, values, scale)
        if out is not None:
            return out
    rows_per_block = max(1, BLOCK_SCORES // (b * h * s))
    if causal:
        rows_per_block = min(rows_per_block, CAUSAL_BLOCK_ROWS)
    # every block multiplies by K and V: lay them out contiguously once, not per block
    keys_t = mx.contiguous(keys_t)
    values = mx.contiguous(values)
    blocks = []
    for start in range(0, length, rows_per_block):
        rows = slice(start, min(start + rows_per_block, length))
        qb = q[:, :, :, rows]
        lb = qb.shape[3]
        # causal: a block's rows see keys up to its last row's position, so the keys after
        # it are never scored (the masked half of a chunk's own square)
        first = s - length + start
        width = first + lb if causal else s
        scores = (qb.reshape(b, hkv, rep * lb, d) @ keys_t[..., :width]).reshape(
            b, hkv, rep, lb, width)
        if causal:
            # the mask as one additive [lb, width] table, added inside numpy's threaded
            # pass (MLX's where() over the scores is one more single-threaded pass and buffer)
            probs = softmax_numpy_(scores, add=_causal_table(first, lb, width))
        else:
            probs = softmax_numpy_(_masked(scores, mask, rows, s, length))
        out = (probs.reshape(b, hkv, rep * lb, width) @ values[:, :, :width]).reshape(
            b, hkv, rep, lb, d)
        mx.eval(out)  # this block's scores are freed before the next block's
        blocks.append(out)
    return mx.concatenate(blocks, axis=3).reshape(b, h, length, d)
