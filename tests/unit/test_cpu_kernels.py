"""The CPU kernels (polynomial exp, softmax, SwiGLU, attention) against MLX's own ops."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from app.accel.cpu import kernels as cpu_kernels


def test_fast_exp_matches_float64_exp() -> None:
    x = np.linspace(-80.0, 80.0, 200_001, dtype=np.float32)
    got = np.array(cpu_kernels.fast_exp(mx.array(x))).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 5e-7


def test_fast_exp_limits_stay_finite_and_order_preserving() -> None:
    got = np.array(cpu_kernels.fast_exp(mx.array([-math.inf, -1e30, -200.0, 0.0, 200.0])))
    assert np.all(np.isfinite(got))
    assert got[0] < 1e-37 and got[1] < 1e-37 and got[2] < 1e-37
    assert got[3] == 1.0 and got[4] > 1e38


def test_softmax_and_swiglu_match_mlx() -> None:
    s = mx.random.normal((3, 5, 7, 301), key=mx.random.key(0)) * 8
    assert mx.allclose(cpu_kernels.softmax(s), mx.softmax(s, axis=-1), atol=1e-6).item()
    g = mx.random.normal((4, 1, 96), key=mx.random.key(1)) * 6
    x = mx.random.normal((4, 1, 96), key=mx.random.key(2))
    assert mx.allclose(cpu_kernels.swiglu(g, x), nn.silu(g) * x, atol=1e-5).item()


@pytest.mark.parametrize("shape", [(1, 300, 768), (1, 301, 769)])  # the latter: a ragged tail
def test_prefill_sized_swiglu_matches_mlx(shape: tuple[int, int, int]) -> None:
    """A prefill's gate (past NATIVE_SWIGLU_MIN floats: the C kernel where it is built),
    large magnitudes included, where exp over- and underflows."""
    g = mx.random.normal(shape, key=mx.random.key(1)) * 30
    x = mx.random.normal(shape, key=mx.random.key(2))
    assert g.size >= cpu_kernels.NATIVE_SWIGLU_MIN
    got = cpu_kernels.swiglu(g, x)
    assert got.shape == g.shape and got.dtype == mx.float32
    assert mx.allclose(got, nn.silu(g) * x, atol=1e-5, rtol=1e-5).item()


def test_gelu_matches_exact_gelu() -> None:
    x = mx.array(np.linspace(-12.0, 12.0, 100_001, dtype=np.float32))
    assert mx.allclose(cpu_kernels.gelu(x), nn.gelu(x), atol=1e-6).item()


def _qkv(b: int, h: int, hkv: int, length: int, s: int) -> tuple[mx.array, ...]:
    keys = mx.random.split(mx.random.key(7), 3)
    return (mx.random.normal((b, h, length, 16), key=keys[0]),
            mx.random.normal((b, hkv, s, 16), key=keys[1]),
            mx.random.normal((b, hkv, s, 16), key=keys[2]))


def _left_padding_mask(b: int, length: int, s: int) -> mx.array:
    """Like mlx-lm's BatchKVCache masks: causal, row i ignores its first i keys."""
    pad = mx.arange(b)[:, None, None, None]
    q = mx.arange(s - length, s)[:, None]
    k = mx.arange(s)[None]
    return (q >= k) & (k >= pad)


@pytest.mark.parametrize(("b", "h", "hkv", "length", "s", "mask"), [
    (1, 4, 4, 1, 9, None),             # decode, multi-head
    (3, 6, 2, 1, 33, None),            # decode, grouped queries
    (1, 6, 2, 5, 5, "causal"),         # prefill from empty
    (2, 6, 3, 4, 20, "causal"),        # prefill over a cached prefix
    (3, 6, 2, 1, 12, "padding"),       # batched decode, left-padded rows
    (3, 6, 2, 4, 12, "padding"),       # batched prefill, left-padded rows
    (2, 4, 2, 3, 10, "additive"),
    (1, 6, 2, 520, 1100, "causal"),    # long prefill: numpy softmax in query blocks
    (1, 6, 2, 512, 512, "causal"),     # a first chunk: blocks skip the keys after them
    (2, 9, 3, 300, 300, "causal"),     # batched, a last block shorter than the others
    (2, 6, 2, 400, 1400, "padding"),   # the same with a batch mask, 2 blocks
])
def test_attention_matches_mlx_sdpa(b: int, h: int, hkv: int, length: int, s: int,
                                    mask: str | None) -> None:
    q, k, v = _qkv(b, h, hkv, length, s)
    m: mx.array | str | None = mask
    if mask == "padding":
        m = _left_padding_mask(b, length, s)
    elif mask == "additive":
        m = mx.random.normal((b, 1, length, s), key=mx.random.key(3))
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=m)
    got = cpu_kernels.attention(q, k, v, None, 0.25, m)
    assert got.shape == want.shape
    assert mx.allclose(got, want, atol=2e-5).item()


@pytest.mark.parametrize(("h", "hkv", "length", "s", "d"), [
    (9, 3, 521, 1033, 64),   # a second chunk over the first, SmolLM2's heads
    (8, 2, 33, 33, 128),     # a chunk of its own, a block of rows past a multiple of 6
    (4, 4, 7, 50, 32),       # few rows over a cached prefix, keys past a multiple of 32
])
def test_native_causal_prefill_reads_a_cache_slice_in_place(h: int, hkv: int, length: int,
                                                            s: int, d: int) -> None:
    from app.accel.cpu import native
    lib = native.library()
    if lib is None or not lib.prefill_attention_available():
        pytest.skip("the native prefill attention needs AVX-512")
    keys = mx.random.split(mx.random.key(s), 3)
    q = mx.random.normal((1, h, length, d), key=keys[0])
    buf_k = mx.random.normal((1, hkv, s + 64, d), key=keys[1])  # a cache buffer, sliced
    buf_v = mx.random.normal((1, hkv, s + 64, d), key=keys[2])
    k, v = buf_k[:, :, :s], buf_v[:, :, :s]
    got = cpu_kernels.causal_prefill_native(q, k, v, d ** -0.5)
    assert got is not None
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=d ** -0.5, mask="causal")
    assert mx.allclose(got, want, atol=2e-5).item()
