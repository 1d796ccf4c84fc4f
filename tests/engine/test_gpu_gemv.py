"""The GPU wing's few-row matmul (app/accel/gpu/gemv.py, linear.py) against MLX's matmul.
The kernel cases run where MLX has CUDA; the shape checks and the module swap anywhere."""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import mlx.nn as nn
import pytest

from app.accel.gpu import gemv
from app.accel.gpu import linear as gpu_linear
from app.models.device import on_cuda
from tests.tiny_model import random_model


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


def test_routes_only_where_the_kernel_measured_ahead() -> None:
    bf16 = mx.bfloat16
    small, big = mx.zeros((4096, 4096), bf16), mx.zeros((12288, 4096), bf16)
    assert gpu_linear.routed(mx.zeros((2, 4096), bf16), small)
    assert gpu_linear.routed(mx.zeros((8, 4096), bf16), small)
    assert not gpu_linear.routed(mx.zeros((1, 4096), bf16), small)  # MLX's own gemv
    assert not gpu_linear.routed(mx.zeros((4, 4096), bf16), big)  # MLX's GEMM at full speed
    assert not gpu_linear.routed(mx.zeros((9, 4096), bf16), small)


def _linears(model: object) -> Counter[str]:
    return Counter(type(m).__name__ for _, m in model.named_modules()  # type: ignore[attr-defined]
                   if isinstance(m, nn.Linear))


def test_rows_linear_swaps_in_and_out_sharing_the_arrays() -> None:
    model = random_model("llama")  # float32: RowsLinear keeps nn.Linear's own matmul
    tokens = mx.array([[5, 9, 200, 17]])
    want = model(tokens)
    plain = _linears(model)["Linear"]
    weight = model.layers[0].mlp.gate_proj.weight
    assert gpu_linear.install(model) == plain
    assert _linears(model) == {"RowsLinear": plain}
    assert model.layers[0].mlp.gate_proj.weight is weight
    assert mx.array_equal(model(tokens), want).item()
    assert gpu_linear.uninstall(model) == plain
    assert _linears(model) == {"Linear": plain}


@pytest.mark.skipif(not on_cuda(), reason="the kernel runs on an NVIDIA GPU")
def test_rows_linear_decode_logits_match_mlx() -> None:
    model = random_model("llama")
    model.set_dtype(mx.bfloat16)
    tokens = mx.array([[5, 9, 200, 17], [3, 3, 8, 100]])
    want = model(tokens).astype(mx.float32)
    gpu_linear.install(model)
    try:
        got = model(tokens).astype(mx.float32)  # 8 rows: every linear through the kernel
    finally:
        gpu_linear.uninstall(model)
    assert mx.abs(got - want).max().item() <= 0.03 * mx.abs(want).max().item()
