"""Few-row matmuls against bf16/f16 weights, as one CUDA kernel of ours (opt-in).

A decode step at 1-8 streams multiplies a handful of rows by every weight, so its time is
the time to read the weights once. llama.cpp's engine reads them faster than MLX's GEMM
does at these sizes (issue 17: 8B one stream 207 against a bare MLX loop's 104-168 tok/s,
the bandwidth bound being 327), and that gap is below anything the server adds.

`rows_matmul(x, w)` = x @ w.T for x [M, K] with M <= MAX_ROWS and w [N, K] (an nn.Linear
weight as it lies). A warp computes 1-4 output columns (`columns_per_warp`): each lane
reads 16 bytes of each of its weight rows at a time (a warp reads 512 contiguous bytes of
each), multiplies them into every row of x (small and shared by all warps, so it comes from
the caches) and keeps one float sum per row and column; the warp adds its lanes' sums at
the end. Every weight byte is read once per call.

Status: behind `gpu_rows_matmul` (off), routed by linear.py. On an H200 it beat MLX's
matmul only on small weights at 2-8 rows, and a whole decode step came out level with
MLX's (bench/results/gpu-rows-matmul.md), so no model uses it by default.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

MAX_ROWS = 8
WARPS = 8  # a block: 8 columns
VEC = 8  # elements of a 16-byte load
DTYPES = (mx.bfloat16, mx.float16)

HEADER = """
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack { T v[N]; };
"""

# Template constants: T (element type), M (rows of x), C (columns a warp). Inputs x [M, K],
# w [N, K], both row-contiguous, K a multiple of 8. Output y [M, N].
SOURCE = """
  constexpr int VEC = 8;
  const int K = x_shape[1];
  const int N = w_shape[0];
  const int lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * C;
  if (n0 >= N) return;
  float acc[M][C];
#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int c = 0; c < C; c++) acc[m][c] = 0.0f;
  const int vectors = K / VEC;
#pragma unroll 2
  for (int i = lane; i < vectors; i += 32) {
    float wf[C][VEC];
#pragma unroll
    for (int c = 0; c < C; c++) {
      const int n = min(n0 + c, N - 1);  // a last warp's spare columns repeat the last one
      Pack<T, VEC> wv =
          *reinterpret_cast<const Pack<T, VEC>*>(w + static_cast<int64_t>(n) * K + i * VEC);
#pragma unroll
      for (int j = 0; j < VEC; j++) wf[c][j] = static_cast<float>(wv.v[j]);
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
      Pack<T, VEC> xv = *reinterpret_cast<const Pack<T, VEC>*>(x + m * K + i * VEC);
      float xf[VEC];
#pragma unroll
      for (int j = 0; j < VEC; j++) xf[j] = static_cast<float>(xv.v[j]);
#pragma unroll
      for (int c = 0; c < C; c++)
#pragma unroll
        for (int j = 0; j < VEC; j++) acc[m][c] += wf[c][j] * xf[j];
    }
  }
#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int c = 0; c < C; c++) {
      float s = acc[m][c];
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0 && n0 + c < N) y[m * N + n0 + c] = static_cast<T>(s);
    }
"""


def columns_per_warp(rows: int) -> int:
    """Output columns a warp computes: each row of x it loads then meets that many weight
    rows, so the caches deliver x at most twice as fast as memory delivers the weights."""
    return 1 if rows <= 2 else 2 if rows <= 4 else 4


_kernel: Any = None


def supports(x: mx.array, w: mx.array) -> bool:
    """Whether `rows_matmul` computes x @ w.T for these arrays."""
    return (x.ndim == 2 and w.ndim == 2 and 1 <= x.shape[0] <= MAX_ROWS
            and x.shape[1] == w.shape[1] and w.shape[1] % VEC == 0
            and x.dtype in DTYPES and w.dtype == x.dtype)


def rows_matmul(x: mx.array, w: mx.array) -> mx.array:
    """x @ w.T for x [M, K] (M <= MAX_ROWS) and w [N, K], float sums, out in x's dtype."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(name="mlxd_rows_matmul", input_names=["x", "w"],
                                      output_names=["y"], source=SOURCE, header=HEADER)
    M, N = x.shape[0], w.shape[0]
    C = columns_per_warp(M)
    return _kernel(
        inputs=[x, w],
        template=[("T", x.dtype), ("M", M), ("C", C)],
        grid=((N + C - 1) // C * 32, 1, 1),
        threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[(M, N)],
        output_dtypes=[x.dtype],
    )[0]
