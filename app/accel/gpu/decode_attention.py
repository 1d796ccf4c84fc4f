"""Decode attention over a left-padded batch cache, as one CUDA kernel of ours.

A batched decode step (one query per row, rows of different lengths left-padded in
mlx-lm's `BatchKVCache`) needs a mask, and MLX's CUDA backend has no fused attention
that takes an array mask for a single query: `mx.fast.scaled_dot_product_attention`
falls back to separate matmul, mask, softmax and matmul kernels, with the mask rebuilt
every step. This kernel takes each row's first valid key instead of a mask and does the
whole attention in one launch.

One thread block per (row, query head), four warps over the keys. In each round of 32
keys a lane scores one key against the query (the whole head dimension, read as 16-byte
vectors), the warp updates its running maximum and sum once for all 32 (online softmax),
then every lane adds the 32 weighted value rows for its slice of the head dimension. The
four warps' partial results meet in shared memory at the end. K and V are read in place
through their strides (the cache hands out slices of a larger buffer: a contiguous copy
would move the whole cache every step).

The kernel source is fixed; shapes and strides travel as arguments, so a growing cache
does not compile anything new. `tests/accel/test_gpu_decode_attention.py` checks it
against MLX's own attention where a GPU runs; `bench/micro_gpu_step.py` measures it.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

WARPS = 4
HEAD_DIMS = (64, 128, 256)  # lanes own D/32 elements each: D a multiple of 32, >= 64
DTYPES = (mx.bfloat16, mx.float16)

HEADER = """
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack { T v[N]; };

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
"""

# Template constants: T (element type), D (head dimension), W (warps a block).
# Inputs: q [B, Hq, 1, D], k/v [B, Hkv, L, D] (any strides, last one 1), start [B] int32
# (first valid key of each row), scale [1] float32. Output: out [B, Hq, 1, D].
SOURCE = """
  constexpr int PER_LANE = D / 32;   // head elements a lane owns in the value sum
  constexpr int VEC = 8;             // elements in one 16-byte load of a key row
  constexpr float NONE = -3.0e38f;   // a maximum before any key was seen

  __shared__ float q_sh[D];
  __shared__ float part_m[W];
  __shared__ float part_l[W];
  __shared__ float part_acc[W][D];

  const int Hq = q_shape[1];
  const int Hkv = k_shape[1];
  const int L = k_shape[2];
  const int row = blockIdx.x / Hq;
  const int head = blockIdx.x % Hq;
  const int kv_head = head / (Hq / Hkv);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  const T* qp = q + row * q_strides[0] + head * q_strides[1];
  const T* kp = k + row * k_strides[0] + kv_head * k_strides[1];
  const T* vp = v + row * v_strides[0] + kv_head * v_strides[1];
  const int64_t kt = k_strides[2];
  const int64_t vt = v_strides[2];
  const float s = scale[0];
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    q_sh[d] = static_cast<float>(qp[d]) * s;
  }
  __syncthreads();

  float m = NONE;
  float l = 0.0f;
  float acc[PER_LANE];
  for (int i = 0; i < PER_LANE; i++) acc[i] = 0.0f;

  for (int base = start[row] + warp * 32; base < L; base += W * 32) {
    const int t = base + lane;
    float score = NONE;
    if (t < L) {
      const T* kr = kp + t * kt;
      float dot = 0.0f;
#pragma unroll
      for (int d = 0; d < D; d += VEC) {
        Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(kr + d);
#pragma unroll
        for (int j = 0; j < VEC; j++) dot += q_sh[d + j] * static_cast<float>(pk.v[j]);
      }
      score = dot;
    }
    const float m_new = fmaxf(m, warp_max(score));
    const float p = t < L ? __expf(score - m_new) : 0.0f;
    const float keep = __expf(m - m_new);
    l = l * keep + warp_sum(p);
    for (int i = 0; i < PER_LANE; i++) acc[i] *= keep;
    const int n = min(32, L - base);
    for (int j = 0; j < n; j++) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
      Pack<T, PER_LANE> pv =
          *reinterpret_cast<const Pack<T, PER_LANE>*>(vp + (base + j) * vt + lane * PER_LANE);
#pragma unroll
      for (int i = 0; i < PER_LANE; i++) acc[i] += pj * static_cast<float>(pv.v[i]);
    }
    m = m_new;
  }

  if (lane == 0) {
    part_m[warp] = m;
    part_l[warp] = l;
  }
  for (int i = 0; i < PER_LANE; i++) part_acc[warp][lane * PER_LANE + i] = acc[i];
  __syncthreads();

  float m_all = NONE;
  for (int w = 0; w < W; w++) m_all = fmaxf(m_all, part_m[w]);
  float l_all = 0.0f;
  for (int w = 0; w < W; w++) l_all += part_l[w] * __expf(part_m[w] - m_all);
  const float inv = l_all > 0.0f ? 1.0f / l_all : 0.0f;
  T* op = out + (row * Hq + head) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < W; w++) total += part_acc[w][d] * __expf(part_m[w] - m_all);
    op[d] = static_cast<T>(total * inv);
  }
"""

_kernel: Any = None
_scales: dict[float, mx.array] = {}


def supports(queries: mx.array, keys: mx.array) -> bool:
    """Whether this kernel computes the attention of these arrays (one query a row)."""
    D = queries.shape[-1]
    return (queries.shape[2] == 1 and D in HEAD_DIMS and keys.shape[-1] == D
            and queries.dtype in DTYPES and keys.dtype == queries.dtype
            and queries.shape[1] % keys.shape[1] == 0)


def decode_attention(queries: mx.array, keys: mx.array, values: mx.array,
                     start: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale) v over keys [start[b], L) of each row b, for q [B, Hq, 1, D]
    and k, v [B, Hkv, L, D]; grouped-query heads share their key/value head."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(
            name="mlxd_decode_attention",
            input_names=["q", "k", "v", "start", "scale"],
            output_names=["out"],
            source=SOURCE,
            header=HEADER,
            ensure_row_contiguous=False,
        )
    if scale not in _scales:
        _scales[scale] = mx.array([scale], dtype=mx.float32)
    B, Hq, _, D = queries.shape
    if start.dtype != mx.int32:
        start = start.astype(mx.int32)
    return _kernel(
        inputs=[queries, keys, values, start, _scales[scale]],
        template=[("T", queries.dtype), ("D", D), ("W", WARPS)],
        grid=(B * Hq * WARPS * 32, 1, 1),
        threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[(B, Hq, 1, D)],
        output_dtypes=[queries.dtype],
    )[0]
