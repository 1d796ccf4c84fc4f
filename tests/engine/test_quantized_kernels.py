"""The CPU's quantized kernels (app/accel/cpu/quantized.py, quantized_prefill.py) against
MLX's own dequantize on the same packed weights."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from app.accel.cpu import quantized, quantized_prefill
from app.accel.cpu.quantized import QuantizedMatmul, QuantizedWeight

pytestmark = pytest.mark.skipif(not quantized.available(), reason="no C compiler here")


def _weight(n_out: int, n_in: int, bits: int, group: int, seed: int) -> tuple[Any, mx.array]:
    mx.random.seed(seed)
    q, s, b = mx.quantize(mx.random.normal((n_out, n_in)), group_size=group, bits=bits)
    mx.eval(q, s, b)
    dense = mx.dequantize(q, s, b, group_size=group, bits=bits)
    return QuantizedWeight(q, s, b, group, bits), dense


@pytest.mark.skipif(not quantized.gemm_available(), reason="the GEMM kernel needs AVX-512")
@pytest.mark.parametrize(("rows", "n_out"), [(1, 14), (31, 96), (33, 100), (77, 27), (512, 70)])
@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, 128), (8, 32), (8, 64)])
def test_gemm_matches_dequantized_weights(bits: int, group: int, rows: int, n_out: int) -> None:
    """Rows past a panel of 32 and weight rows past a tile of 14 (their padding must not
    reach the output), both widths and group sizes."""
    w, dense = _weight(n_out, 384, bits, group, seed=rows + n_out)
    x = np.random.default_rng(rows).standard_normal((rows, 384)).astype(np.float32)
    want = np.asarray(mx.array(x) @ dense.T)
    got = np.asarray(w.gemm(x))
    assert got.shape == (rows, n_out)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 17])
@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, 64), (8, 32), (8, 128)])
def test_matmul_matches_dequantized_weights(bits: int, group: int, rows: int) -> None:
    w, dense = _weight(96, 256, bits, group, seed=rows)
    x = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32)
    want = np.asarray(mx.array(x) @ dense.T)
    got = QuantizedMatmul([w])(x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_stacked_weights_with_bias_and_split_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantized, "PARALLEL_MIN_BYTES", 1)  # every weight over the threads
    (a, da), (b, db) = _weight(64, 128, 4, 32, 1), _weight(40 * 8, 128, 4, 32, 2)
    bias = np.random.default_rng(0).standard_normal(64 + 320).astype(np.float32)
    m = QuantizedMatmul([a, b], bias)
    assert (m._split > 1 and all(split > 1 for _, _, split, _ in m.parts)) or \
        quantized.workers() == 1
    x = np.random.default_rng(1).standard_normal((2, 5, 128)).astype(np.float32)
    want = np.asarray(mx.array(x) @ mx.concatenate([da, db]).T) + bias
    np.testing.assert_allclose(m(x), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_packed_weights_are_not_copied() -> None:
    q, s, b = mx.quantize(mx.random.normal((64, 128)), group_size=32, bits=4)
    mx.eval(q, s, b)
    w = QuantizedWeight(q, s, b, 32, 4)
    assert np.shares_memory(w.packed, np.asarray(q))
    assert np.shares_memory(w.scales, np.asarray(s))


def test_embedding_rows_are_mlx_dequantized_rows() -> None:
    w, dense = _weight(50, 64, 4, 32, 3)
    index = np.array([0, 49, 7, 7])
    np.testing.assert_allclose(w.rows(index), np.asarray(dense)[index], rtol=0, atol=1e-6)


def test_unsupported_formats_are_refused() -> None:
    q, s, b = mx.quantize(mx.random.normal((8, 96)), group_size=32, bits=3)
    with pytest.raises(ValueError, match="3 bits"):
        QuantizedWeight(q, s, b, 32, 3)
    assert not quantized.supported(4, 16, 64)


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantizing_prefill_matches_mlx(bits: int) -> None:
    """Many rows through the swapped modules equal MLX's quantized forward; few rows keep
    MLX's kernel; uninstall gives MLX's classes back with the same arrays."""
    model = nn.Sequential(nn.Linear(128, 96), nn.Linear(96, 64, bias=False))
    emb = nn.Embedding(40, 64)
    holder = nn.Module()
    holder.body, holder.emb = model, emb
    nn.quantize(holder, group_size=32, bits=bits)
    x = mx.random.normal((2, 20, 128))
    want = holder.emb.as_linear(holder.body(x))
    weight = holder.body.layers[0].weight
    assert quantized_prefill.install(holder) == 3
    assert type(holder.body.layers[0]) is quantized_prefill.DequantizingLinear
    assert holder.body.layers[0].weight is weight  # the same array, not a copy
    got = holder.emb.as_linear(holder.body(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                               atol=1e-4 * float(mx.abs(want).max()))
    few = holder.body(x[:, :2])
    assert quantized_prefill.uninstall(holder) == 3
    assert type(holder.body.layers[0]) is nn.QuantizedLinear
    np.testing.assert_allclose(np.asarray(few), np.asarray(holder.body(x[:, :2])), rtol=0,
                               atol=1e-6)


@pytest.mark.skipif(not quantized.gemm_available(), reason="the GEMM kernel needs AVX-512")
def test_prefill_takes_the_many_row_path_it_measured_faster(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """choose_gemm times both many-row paths and marks every swapped module with the
    faster; either gives MLX's result, and each is the one that runs."""
    holder = nn.Module()
    holder.body = nn.Sequential(nn.Linear(256, 384), nn.Linear(384, 128))
    nn.quantize(holder, group_size=32, bits=4)
    x = mx.random.normal((1, 64, 256))
    want = holder.body(x)
    quantized_prefill.install(holder)
    choice = quantized_prefill.choose_gemm(holder)
    assert choice is not None and choice.gemm_s > 0 and choice.sgemm_s > 0
    assert all(m.__dict__[quantized_prefill.GEMM_ATTR] == choice.gemm
               for m in holder.body.layers)
    calls: list[str] = []
    real_gemm, real_dense = QuantizedWeight.gemm, quantized_prefill._dense
    monkeypatch.setattr(QuantizedWeight, "gemm",
                        lambda self, a: calls.append("gemm") or real_gemm(self, a))
    monkeypatch.setattr(quantized_prefill, "_dense",
                        lambda m: calls.append("sgemm") or real_dense(m))
    for force in (True, False):
        calls.clear()
        quantized_prefill.use_gemm(holder, force)
        got = holder.body(x)
        assert calls == ["gemm" if force else "sgemm"] * 2
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                                   atol=1e-4 * float(mx.abs(want).max()))


@pytest.mark.skipif(not quantized.int8_available(),
                    reason="no int8 kernel (AVX-512 VNNI or AVX2) here")
@pytest.mark.parametrize("rows", [1, 8, 11])
@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, 128), (8, 32), (8, 64)])
def test_int8_activations_within_their_rounding(bits: int, group: int, rows: int) -> None:
    """Each output within what rounding x to int8 per block of 32 can move it: half a step
    (absmax / 127) times the block's sum of |w|. A wrong layout or scale is far outside."""
    w, dense = _weight(80, 384, bits, group, seed=rows)
    x = np.random.default_rng(rows).standard_normal((rows, 384)).astype(np.float32)
    m = QuantizedMatmul([w], int8=True)
    assert m.int8
    d = np.asarray(dense)
    want = x @ d.T
    step = np.abs(x.reshape(rows, -1, 32)).max(-1) / 127  # [rows, blocks]
    weight_mass = np.abs(d.reshape(80, -1, 32)).sum(-1)  # [n, blocks]
    bound = 0.5 * step @ weight_mass.T + 1e-4 * np.abs(want).max()
    err = np.abs(m(x) - want)
    assert (err <= bound).all(), float((err / bound).max())
