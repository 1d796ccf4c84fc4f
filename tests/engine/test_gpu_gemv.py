"""The GPU wing's few-row matmul (app/accel/gpu/gemv.py) against MLX's matmul. The kernel
cases run where MLX has CUDA; the shape checks anywhere."""

from __future__ import annotations

import mlx.core as mx
import pytest

from app.accel.gpu import gemv
from app.models.device import on_cuda


@pytest.mark.skipif(not on_cuda(), reason="the kernel runs on an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (1000, 1024), (8, 12288), (49152, 64)])
def test_rows_matmul_matches_mlx(dtype: mx.Dtype, rows: int, n: int, k: int) -> None:
    mx.random.seed(rows * n + k)
    x = mx.random.normal((rows, k)).astype(dtype)
    w = (mx.random.normal((n, k)) * k ** -0.5).astype(dtype)
    want = x.astype(mx.float32) @ w.astype(mx.float32).T
    got = gemv.rows_matmul(x, w)
    assert got.shape == (rows, n) and got.dtype == dtype
    assert mx.allclose(got.astype(mx.float32), want, atol=3e-2, rtol=2e-2).item()


def test_supports_only_few_rows_of_matching_half_floats() -> None:
    bf16 = mx.bfloat16
    w = mx.zeros((16, 64), bf16)
    assert gemv.supports(mx.zeros((8, 64), bf16), w)
    assert not gemv.supports(mx.zeros((9, 64), bf16), w)  # a prefill: MLX's GEMM
    assert not gemv.supports(mx.zeros((1, 64)), mx.zeros((16, 64)))  # float32
    assert not gemv.supports(mx.zeros((1, 60), bf16), mx.zeros((16, 60), bf16))  # K % 8
    assert not gemv.supports(mx.zeros((1, 64), bf16), mx.zeros((16, 32), bf16))
