"""Prefill of quantized models on the CPU: dequantize a layer's weight, then one sgemm.

MLX's CPU `quantized_matmul` is a plain loop: for a 512-row prefill chunk against a
[1536, 576] 4-bit weight it ran ~80x slower here than a float32 matmul through OpenBLAS.
Dequantizing the weight and multiplying in float32 keeps prefill near sgemm speed. The
dequantization is the C kernel's (native/qmatmul.c, over its threads), written straight
into a fresh MLX buffer, and the layer's output is evaluated at once, so the float32
weight lives for that one matmul: the model still holds one copy of its weights, the
packed one. (With MLX's elementwise ops instead, the fallback where no C compiler is,
dequantizing all of SmolLM2 took ~0.2 s per prefill: a 40-token prompt took 5x longer
than from float32 weights.)

Where the CPU has AVX-512 there is a second way for many rows, qgemm.c's GEMM that
dequantizes weight tiles in cache. Which one is faster depends on the machine: it won
1.4-1.9x where OpenBLAS was pinned to its Haswell kernels, and lost by ~20% on a Xeon whose
OpenBLAS ran its AVX-512 ones (bench/results/profile-cpu-prefill-spr.md). So `choose_gemm`
(at load, after `install`) times both on the model's widest projection and keeps the faster.

Few rows (a short prompt, a chunk's tail, a decode step through MLX) go through the C
kernel of decode steps (quantized.py), which reads only the packed bytes; without the C
kernels they keep MLX's own. `install(model)` swaps the model's quantized modules for these
subclasses in place; they share the same arrays, so nothing is copied and `uninstall`
restores MLX's classes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from app.accel.cpu import quantized
from app.accel.cpu.quantized import QuantizedMatmul, QuantizedWeight
from app.accel.module_swap import swap_modules

# Fewer rows than these go through qmatmul.c's few-row kernel (a decode step's, which
# dequantizes in registers): below MIN_ROWS where the CPU has no GEMM kernel (then
# dequantize + sgemm), below GEMM_MIN_ROWS where it has one (qgemm.c pays ~0.3 ms a call
# to dequantize its tiles, and the few-row kernel's time grows with the rows). MLX's own
# quantized kernel, which these rows once kept, took ~0.65 s for a 9-token chunk of
# SmolLM2 here (bench/results/profile-cpu-prefill.md).
MIN_ROWS = 16
GEMM_MIN_ROWS = 48
CALIBRATION_ROWS = 256  # rows of the timed product: a prefill chunk's order of size
CALIBRATION_REPS = 3  # alternated; the best of each counts
GEMM_ATTR = "_mlxd_gemm"  # on each swapped module: True = qgemm.c, False = dequantize + sgemm

logger = logging.getLogger(__name__)


def dequantize(weight: mx.array, scales: mx.array, biases: mx.array, group_size: int,
               bits: int) -> mx.array:
    """mx.dequantize in float32, from elementwise ops (faster than mx.dequantize on the
    CPU)."""
    n = weight.shape[0]
    shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
    q = (weight[..., None] >> shifts) & ((1 << bits) - 1)
    q = q.reshape(n, -1, group_size).astype(mx.float32)
    s = scales.astype(mx.float32)[..., None]
    b = biases.astype(mx.float32)[..., None]
    return (q * s + b).reshape(n, -1)


# One float32 buffer per weight shape, reused by every layer of that shape: each use is
# evaluated (its matmul done) before the next layer writes into it, on the engine thread.
_scratches: dict[tuple[int, int], tuple[mx.array, np.ndarray]] = {}


def _scratch(n_out: int, n_in: int) -> tuple[mx.array, np.ndarray] | None:
    """An evaluated [n_out, n_in] float32 MLX array and a writable view of its memory."""
    found = _scratches.get((n_out, n_in))
    if found is None:
        out = mx.zeros((n_out, n_in), dtype=mx.float32)
        mx.eval(out)
        view = np.asarray(out)
        if not (view.flags.writeable and view.flags.c_contiguous):
            return None
        found = _scratches[(n_out, n_in)] = (out, view)
    return found


def _dense(module: Any) -> mx.array:
    """`module`'s weight as an evaluated float32 array (C kernel where it is available)."""
    native = _native(module)
    if native is not None:
        scratch = _scratch(native.n_out, native.n_in)
        if scratch is not None:
            native.dequantize_into(scratch[1])
            return scratch[0]
    return dequantize(module.weight, module.scales, module.biases, module.group_size,
                      module.bits)


def _rows(x: mx.array) -> int:
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    return rows


def _native(module: Any) -> QuantizedWeight | None:
    """The C kernels' view of `module`'s weight (made once), or None where they cannot
    take it."""
    native = module.__dict__.get("_mlxd_native")
    if native is None and quantized.available() and \
            quantized.supported(module.bits, module.group_size,
                                module.weight.shape[-1] * 32 // module.bits):
        native = QuantizedWeight.of(module)
        module.__dict__["_mlxd_native"] = native
    return native


def _float_rows(x: mx.array) -> mx.array:
    """x as evaluated float32 rows [-1, x.shape[-1]] for the C kernels (the caller keeps
    it while a numpy view of it is in use)."""
    x32 = x.astype(mx.float32).reshape(-1, x.shape[-1])
    mx.eval(x32)
    return x32


def _few_rows(module: Any, native: QuantizedWeight) -> QuantizedMatmul:
    matmul = module.__dict__.get("_mlxd_rows")
    if matmul is None:
        matmul = module.__dict__["_mlxd_rows"] = QuantizedMatmul([native])
    return matmul  # type: ignore[no-any-return]


def _dense_matmul(module: Any, x: mx.array) -> mx.array | None:
    """x @ W.T (+ bias), evaluated: through the C kernels (few rows, or the quantized GEMM
    where the CPU has it), else through the dequantized weight and an sgemm; None where
    MLX's own kernel should take it (few rows without the C kernels, or a format without
    biases)."""
    if module.biases is None:
        return None
    rows, native = _rows(x), _native(module)
    gemm = native is not None and module.__dict__.get(GEMM_ATTR, quantized.gemm_available())
    if native is not None and rows < (GEMM_MIN_ROWS if gemm else MIN_ROWS):
        x32 = _float_rows(x)
        y = mx.array(_few_rows(module, native)(np.asarray(x32)))
        y = y.reshape(*x.shape[:-1], native.n_out)
    elif rows < MIN_ROWS:
        return None
    elif native is not None and gemm:
        x32 = _float_rows(x)
        y = native.gemm(np.asarray(x32)).reshape(*x.shape[:-1], native.n_out)
    else:
        y = x.astype(mx.float32) @ _dense(module).T
    if "bias" in module:
        y = y + module.bias
    y = y.astype(x.dtype)
    mx.eval(y)  # frees the float32 weight before the next layer makes its own
    return y


class DequantizingLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        y = _dense_matmul(self, x)
        return super().__call__(x) if y is None else y


class DequantizingEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        y = _dense_matmul(self, x)
        return super().as_linear(x) if y is None else y


SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.QuantizedLinear: DequantizingLinear,
                           nn.QuantizedEmbedding: DequantizingEmbedding}


def _swap(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> int:
    return swap_modules(model, table, lambda m: getattr(m, "mode", "affine") == "affine")


def install(model: nn.Module) -> int:
    """Swap `model`'s affine-quantized linears and embeddings for the dequantizing ones;
    returns how many were swapped."""
    return _swap(model, SWAPS)


@dataclass(slots=True)
class GemmChoice:
    """What `choose_gemm` measured: the best seconds of each path, and the one kept."""

    gemm_s: float
    sgemm_s: float

    @property
    def gemm(self) -> bool:
        return self.gemm_s < self.sgemm_s

    @property
    def kept(self) -> str:
        return "quantized GEMM" if self.gemm else "dequantize + sgemm"

    def describe(self) -> str:
        return f"{self.kept} (GEMM {self.gemm_s * 1e3:.1f} ms, dequantize + sgemm " \
               f"{self.sgemm_s * 1e3:.1f} ms)"


def choose_gemm(model: nn.Module) -> GemmChoice | None:
    """Time qgemm.c against dequantize + sgemm on `model`'s widest swapped projection and
    mark every swapped module with the faster; None where there is no choice (no GEMM
    kernel on this CPU, nothing swapped)."""
    swapped = [m for _, m in model.named_modules() if isinstance(m, DequantizingLinear)
               and m.biases is not None and _native(m) is not None]
    if not swapped or not quantized.gemm_available():
        return None
    widest = max(swapped, key=lambda m: m.weight.size)
    native = _native(widest)
    assert native is not None
    x = np.random.default_rng(0).standard_normal(
        (CALIBRATION_ROWS, native.n_in)).astype(np.float32)
    x_mx = mx.array(x)
    best = [float("inf"), float("inf")]
    for _ in range(CALIBRATION_REPS + 1):  # the first round warms both up
        for i, run in enumerate((lambda: native.gemm(x), lambda: x_mx @ _dense(widest).T)):
            t0 = time.perf_counter()
            mx.eval(run())
            best[i] = min(best[i], time.perf_counter() - t0)
    choice = GemmChoice(*best)
    use_gemm(model, choice.gemm)
    logger.info("prefill of quantized layers: %s", choice.describe())
    return choice


def use_gemm(model: nn.Module, gemm: bool) -> None:
    """Mark every swapped module of `model`: many rows through qgemm.c (True) or through
    dequantize + sgemm (False)."""
    for m in model.modules():
        if isinstance(m, DequantizingLinear | DequantizingEmbedding):
            m.__dict__[GEMM_ATTR] = gemm


def uninstall(model: nn.Module) -> int:
    return _swap(model, {v: k for k, v in SWAPS.items()})
