"""Few-row matmuls straight from MLX-quantized weights (4- or 8-bit, groups of 32k).

The weight stays the model's own packed array: this reads its memory through a numpy view
(no second copy), which is what lets a quantized model decode from a quarter (4-bit) or
an eighth of float32's bytes a token. Scales and biases are viewed too when they are
float32 and copied to float32 otherwise (an eighth of the packed size at most).

The work is `qmatmul.c` (native/): each weight group is unpacked once into registers and
multiplied into every row. Weights of at least PARALLEL_MIN_BYTES are split by output
column over the kernel's own worker threads (C, spinning briefly between the calls of a
step: a Python thread hand-off per call cost as much as it saved); the call releases the
GIL.
"""

from __future__ import annotations

import ctypes
from typing import Any

import mlx.core as mx
import numpy as np

from app.accel.cpu import buffers, native
from app.accel.cpu.threads import workers

CHUNK = 32  # the kernel's unit of inputs
BITS = (4, 8)
PARALLEL_MIN_BYTES = 16 << 10  # below it, splitting costs more than it saves (measured)

_F32P = ctypes.POINTER(ctypes.c_float)
_U32P = ctypes.POINTER(ctypes.c_uint32)
_I8P = ctypes.POINTER(ctypes.c_int8)


def supported(bits: int, group_size: int, n_in: int) -> bool:
    return bits in BITS and group_size % CHUNK == 0 and n_in % group_size == 0


def available() -> bool:
    return native.library() is not None


def int8_available() -> bool:
    """The kernels were built with an int8-activation path (AVX-512 VNNI or AVX2)."""
    lib = native.library()
    return lib is not None and bool(lib.qmatmul_int8())


def gemm_available() -> bool:
    """The many-row kernel was built (AVX-512); without it prefill dequantizes + sgemm."""
    lib = native.library()
    return lib is not None and bool(lib.qgemm_available())


def int8_fits(bits: int, group_size: int, n_in: int) -> bool:
    """Shapes the int8 kernel takes (pairs of 32-input blocks)."""
    return supported(bits, group_size, n_in) and n_in % 64 == 0 and \
        (group_size == 32 or group_size % 64 == 0)


class QuantizedWeight:
    """W [n_out, n_in] as mx.quantize(W, group_size, bits) stored it: `weight` uint32
    [n_out, n_in * bits / 32], `scales`/`biases` [n_out, n_in / group_size]; numpy views
    of the model's own arrays (they keep those alive)."""

    def __init__(self, weight: mx.array, scales: mx.array, biases: mx.array,
                 group_size: int, bits: int) -> None:
        self.bits, self.group_size = bits, group_size
        self.n_out = int(weight.shape[0])
        self.n_in = int(weight.shape[1]) * 32 // bits
        if not supported(bits, group_size, self.n_in):
            raise ValueError(f"unsupported quantization: {bits} bits, groups of {group_size}")
        self.packed = np.asarray(weight)  # a view of the same memory
        if self.packed.dtype != np.uint32 or not self.packed.flags.c_contiguous:
            raise ValueError("quantized weight must be a contiguous uint32 array")
        self.scales = _f32(scales)
        self.biases = _f32(biases)

    @staticmethod
    def of(module: Any) -> QuantizedWeight:
        """From an nn.QuantizedLinear or nn.QuantizedEmbedding (its rows as outputs)."""
        return QuantizedWeight(module.weight, module.scales, module.biases,
                               module.group_size, module.bits)

    def dequantize_into(self, out: np.ndarray) -> None:
        """All of W as float32 into `out` [n_out, n_in] (C-contiguous, writable), over the
        kernel's threads."""
        lib = native.library()
        assert lib is not None and out.shape == (self.n_out, self.n_in) and \
            out.dtype == np.float32 and out.flags.c_contiguous
        rc = lib.dequantize_mt(self.packed.ctypes.data_as(_U32P),
                               self.scales.ctypes.data_as(_F32P),
                               self.biases.ctypes.data_as(_F32P), self.n_out, self.n_in,
                               self.group_size, self.bits, out.ctypes.data_as(_F32P),
                               lib.qmatmul_threads(workers()))
        if rc != 0:
            raise ValueError("dequantize refused its arguments")

    def gemm(self, x: np.ndarray) -> mx.array:
        """x [M, n_in] float32 @ W.T for many rows (a prefill chunk), W dequantized a tile
        at a time inside the kernel (native/qgemm.c; needs `gemm_available()`)."""
        lib = native.library()
        assert lib is not None and x.shape[-1] == self.n_in
        x = np.ascontiguousarray(x, dtype=np.float32)
        out, view = buffers.output((x.shape[0], self.n_out))
        rc = lib.qgemm(x.ctypes.data, x.shape[0], self.n_in, self.packed.ctypes.data,
                       self.scales.ctypes.data, self.biases.ctypes.data, self.n_out,
                       self.group_size, self.bits, view.ctypes.data,
                       lib.qmatmul_threads(workers()))
        if rc == -2:
            raise MemoryError("no memory for the quantized GEMM's buffers")
        if rc != 0:
            raise ValueError("the quantized GEMM refused its arguments")
        return buffers.result(out, view)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` of W dequantized to float32 (an embedding lookup)."""
        packed = self.packed[index].view(np.uint8)
        if self.bits == 4:
            q = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(len(index), -1)
        else:
            q = packed
        groups = q.reshape(len(index), -1, self.group_size).astype(np.float32)
        w = groups * self.scales[index][..., None] + self.biases[index][..., None]
        return w.reshape(len(index), self.n_in)


class QuantizedMatmul:
    """y = x @ concat(W_1, W_2, ...).T (+ bias) for quantized weights of one input size
    and format (q | k | v, gate | up: one call, their outputs side by side), without
    concatenating the weights: each is read where it lies."""

    def __init__(self, weights: list[QuantizedWeight], bias: np.ndarray | None = None,
                 int8: bool = False) -> None:
        lib = native.library()
        if lib is None:
            raise RuntimeError("the CPU kernels are not available")
        first = weights[0]
        if any((w.n_in, w.bits, w.group_size) != (first.n_in, first.bits, first.group_size)
               for w in weights):
            raise ValueError("stacked weights must share their input size and format")
        self._fn_i8 = lib.qmatmul_i8_mt
        self._quantize = lib.quantize_rows
        # int8 activations: all weights must fit, and share a group size (one xg layout)
        self.int8 = int8 and int8_available() and \
            all(int8_fits(w.bits, w.group_size, w.n_in) for w in weights) and \
            len({w.group_size for w in weights}) == 1
        self.group_size = first.group_size
        threads = lib.qmatmul_threads(workers())
        self.weights = weights
        self.n_in, self.bits = first.n_in, first.bits
        self.n_out = sum(w.n_out for w in weights)
        self.bias = bias
        # (weight, its first output column, threads to split it over, pointers)
        self.parts: list[tuple[QuantizedWeight, int, int, tuple[Any, Any, Any]]] = []
        column = 0
        for w in weights:
            split = threads if w.packed.nbytes >= PARALLEL_MIN_BYTES else 1
            self.parts.append((w, column, split, (w.packed.ctypes.data_as(_U32P),
                                                  w.scales.ctypes.data_as(_F32P),
                                                  w.biases.ctypes.data_as(_F32P))))
            column += w.n_out
        # the float path's one call for all parts (qmatmul_parts)
        self._parts_fn = lib.qmatmul_parts
        vp = ctypes.c_void_p * len(weights)
        self._ws = vp(*(w.packed.ctypes.data for w in weights))
        self._ss = vp(*(w.scales.ctypes.data for w in weights))
        self._bs = vp(*(w.biases.ctypes.data for w in weights))
        self._starts = (ctypes.c_int * (len(weights) + 1))(
            *np.cumsum([0] + [w.n_out for w in weights]).tolist())
        total = sum(w.packed.nbytes for w in weights)
        self._split = threads if total >= PARALLEL_MIN_BYTES else 1

    @staticmethod
    def of(*modules: Any, int8: bool = False) -> QuantizedMatmul:
        """From nn.QuantizedLinear / nn.QuantizedEmbedding modules; their biases, if all
        have one, are added."""
        biases = [m.get("bias") for m in modules]
        bias = None
        if all(b is not None for b in biases):
            bias = np.concatenate([np.asarray(b, dtype=np.float32) for b in biases])
        return QuantizedMatmul([QuantizedWeight.of(m) for m in modules], bias, int8)

    def arrange(self, x: np.ndarray) -> np.ndarray:
        """x [rows, n_in] float32 in the order the kernel reads it (see qmatmul.c)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.bits == 4:
            rows = x.shape[0]
            x = np.ascontiguousarray(
                x.reshape(rows, -1, CHUNK // 2, 2).transpose(0, 1, 3, 2)).reshape(rows, -1)
        return x

    def __call__(self, x: np.ndarray) -> np.ndarray:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.n_in)
        rows = x2.shape[0]
        out = np.empty((rows, self.n_out), np.float32)
        if not self.int8:
            xa = self.arrange(x2)
            if self._parts_fn(xa.ctypes.data, rows, self.n_in, len(self.weights), self._ws,
                              self._ss, self._bs, self._starts, self.group_size, self.bits,
                              out.ctypes.data, self._split) != 0:
                raise ValueError("the quantized matmul kernel refused its arguments")
        else:
            kernel = self._int8_kernel(x2)
            base = out.ctypes.data
            for w, column, split, (wp, sp, bp) in self.parts:
                yp = ctypes.cast(base + 4 * column, _F32P)  # its columns of every output row
                if kernel(rows, w, wp, sp, bp, yp, split) != 0:
                    raise ValueError("the quantized matmul kernel refused its arguments")
        if self.bias is not None:
            out += self.bias
        return out.reshape(*lead, self.n_out)

    def _int8_kernel(self, x: np.ndarray) -> Any:
        """The int8-activation call for x (quantized once for every stacked weight)."""
        x2 = np.ascontiguousarray(x, dtype=np.float32)
        rows, k = x2.shape
        xq = np.empty((rows, k), np.int8)
        dx = np.empty((rows, k // CHUNK), np.float32)
        xg = np.empty((rows, k // self.group_size), np.float32)
        self._quantize(x2.ctypes.data_as(_F32P), rows, k, self.group_size, self.bits,
                       xq.ctypes.data_as(_I8P), dx.ctypes.data_as(_F32P),
                       xg.ctypes.data_as(_F32P))
        qp, dp, gp = xq.ctypes.data_as(_I8P), dx.ctypes.data_as(_F32P), xg.ctypes.data_as(_F32P)

        def call(rows: int, w: QuantizedWeight, wp: Any, sp: Any, bp: Any, yp: Any,
                 split: int) -> int:
            _ = (xq, dx, xg)  # alive while their pointers are used
            return int(self._fn_i8(qp, dp, gp, rows, k, wp, sp, bp, w.group_size, w.bits,
                                   yp, self.n_out, 0, w.n_out, split))
        return call


def _f32(a: mx.array) -> np.ndarray:
    if a.dtype == mx.float32:
        return np.asarray(a)  # a view
    return np.asarray(a.astype(mx.float32))
