"""A decode step's layers in one C call (native/step.c) where every projection is quantized.

`CpuLlamaDecoder` keeps its per-layer Python loop for what this does not cover (float32
panels, int8 activations, qwen3's per-head norms, no C kernels); where it does, the step
makes two calls: the layers, then the final norm and the LM head. The descriptors below
point into the model's own packed arrays (held by the `QuantizedMatmul`s, which keep them
alive) and are built once, at load.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numpy as np

from app.accel.cpu import native
from app.accel.cpu.quantized import QuantizedMatmul

MAX_PARTS = 3  # step.c's qstack_t: q | k | v at most


class QStack(ctypes.Structure):
    _fields_ = [("parts", ctypes.c_int), ("K", ctypes.c_int), ("G", ctypes.c_int),
                ("bits", ctypes.c_int),
                ("w", ctypes.c_void_p * MAX_PARTS), ("s", ctypes.c_void_p * MAX_PARTS),
                ("b", ctypes.c_void_p * MAX_PARTS), ("starts", ctypes.c_int * (MAX_PARTS + 1)),
                ("bias", ctypes.c_void_p)]


class QLayer(ctypes.Structure):
    _fields_ = [("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p),
                ("qkv", QStack), ("out", QStack), ("gate_up", QStack), ("down", QStack)]


def fits(m: Any) -> bool:
    """A projection stack the C step takes: quantized, float activations, ≤ 3 parts."""
    return isinstance(m, QuantizedMatmul) and not m.int8 and len(m.weights) <= MAX_PARTS


def stack(m: QuantizedMatmul) -> QStack:
    s = QStack()
    s.parts, s.K, s.G, s.bits = len(m.weights), m.n_in, m.group_size, m.bits
    column = 0
    s.starts[0] = 0
    for i, w in enumerate(m.weights):
        s.w[i], s.s[i], s.b[i] = w.packed.ctypes.data, w.scales.ctypes.data, w.biases.ctypes.data
        column += w.n_out
        s.starts[i + 1] = column
    if m.bias is not None:
        assert m.bias.dtype == np.float32 and m.bias.flags.c_contiguous
        s.bias = m.bias.ctypes.data
    return s


class Dims(NamedTuple):
    """decode_layers' shape arguments, in its order."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


class FusedStep:
    """The layers (`run`) and the head (`head`) of a decode step through step.c."""

    def __init__(self, lib: Any, layers: list[Any], head: QuantizedMatmul, norm: np.ndarray,
                 dims: Dims, eps: np.float32, scale: np.float32,
                 threads: int) -> None:
        self._lib = lib
        self._layers = (QLayer * len(layers))()
        for dst, la in zip(self._layers, layers, strict=True):
            dst.attn_norm, dst.mlp_norm = la.attn_norm.ctypes.data, la.mlp_norm.ctypes.data
            dst.qkv, dst.out = stack(la.qkv), stack(la.out)
            dst.gate_up, dst.down = stack(la.gate_up), stack(la.down)
        self._head = stack(head)
        self._keep = (layers, head)  # with _norm: the arrays the descriptors point into
        self._norm = norm
        self.vocab = head.n_out
        self._dims = dims
        self._eps, self._scale, self._threads = float(eps), float(scale), threads
        self._n = len(layers)

    @staticmethod
    def build(layers: list[Any], head: Any, norm: np.ndarray, dims: Dims,
              eps: np.float32, scale: np.float32, threads: int) -> FusedStep | None:
        lib = native.library()
        if lib is None or not fits(head) or any(
                la.head_norms is not None or not all(
                    fits(m) for m in (la.qkv, la.out, la.gate_up, la.down)) for la in layers):
            return None
        return FusedStep(lib, layers, head, norm, dims, eps, scale, threads)

    def run(self, x: np.ndarray, keys: list[np.ndarray], values: list[np.ndarray], pos: int,
            start: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x [B, D] embeddings -> the last layer's output [B, D]; K/V written at `pos`."""
        x = np.array(x, dtype=np.float32, order="C")  # written in place: our own copy
        cos, sin = _f32(cos), _f32(sin)
        _check(self._lib.decode_layers(
            ctypes.addressof(self._layers), self._n, x.ctypes.data, x.shape[0], *self._dims,
            *self._kv(keys, values), pos, start.ctypes.data, cos.ctypes.data,
            sin.ctypes.data, self._eps, self._scale, self._threads))
        return x

    def prefill(self, x: np.ndarray, keys: list[np.ndarray], values: list[np.ndarray],
                pos: int, cos: np.ndarray, sin: np.ndarray, gemm_rows: int) -> np.ndarray:
        """x [n, D] embeddings of one sequence's positions pos .. pos + n - 1 -> the last
        layer's output [n, D]; keys/values [Hkv, cap, d] per layer, written there."""
        x = np.array(x, dtype=np.float32, order="C")
        cos, sin = _f32(cos), _f32(sin)
        _check(self._lib.prefill_layers(
            ctypes.addressof(self._layers), self._n, x.ctypes.data, x.shape[0], *self._dims,
            *self._kv(keys, values), pos, cos.ctypes.data, sin.ctypes.data, self._eps,
            self._scale, gemm_rows, self._threads))
        return x

    def _kv(self, keys: list[np.ndarray], values: list[np.ndarray]) -> tuple[Any, Any, int]:
        """The layers' K/V buffers as step.c takes them: two pointer arrays and the
        capacity (positions per head) they share."""
        cap = keys[0].shape[-2]
        if any(k.shape[-2] != cap or not k.flags.c_contiguous for k in (*keys, *values)):
            raise ValueError("the fused step wants contiguous K/V of one capacity")
        ptrs = ctypes.c_void_p * self._n
        return (ptrs(*(k.ctypes.data for k in keys)), ptrs(*(v.ctypes.data for v in values)),
                cap)

    def head(self, x: np.ndarray) -> np.ndarray:
        """logits [B, V] of the last layer's output x [B, D]."""
        logits = np.empty((x.shape[0], self.vocab), np.float32)
        _check(self._lib.decode_head(ctypes.addressof(self._head), x.ctypes.data, x.shape[0],
                                     x.shape[1], self._norm.ctypes.data, self._eps,
                                     logits.ctypes.data, self._threads))
        return logits


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _check(rc: int) -> None:
    if rc == -2:
        raise MemoryError("no memory for the decode step's work buffers")
    if rc != 0:
        raise ValueError("a decode kernel refused its arguments")
