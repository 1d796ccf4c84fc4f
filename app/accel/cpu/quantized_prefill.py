"""Prefill of quantized models on the CPU: dequantize a layer's weight, then one sgemm.

MLX's CPU `quantized_matmul` is a plain loop: for a 512-row prefill chunk against a
[1536, 576] 4-bit weight it ran ~80x slower here than a float32 matmul through OpenBLAS.
Unpacking the weight with MLX's elementwise ops (a fraction of the sgemm's time) and
multiplying in float32 keeps prefill near sgemm speed, while the float32 weight lives only
for that one matmul of the lazy graph (MLX frees it after its last use): the model still
holds one copy of its weights, the packed one.

Few rows (a decode step through MLX) keep MLX's own kernel, which reads only the packed
bytes. `install(model)` swaps the model's quantized modules for these subclasses in place;
they share the same arrays, so nothing is copied and `uninstall` restores MLX's classes.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

# From this many rows on, dequantize + sgemm beats MLX's quantized kernel here
MIN_ROWS = 16


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


def _rows(x: mx.array) -> int:
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    return rows


class DequantizingLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if _rows(x) < MIN_ROWS or self.biases is None:
            return super().__call__(x)
        w = dequantize(self.weight, self.scales, self.biases, self.group_size, self.bits)
        y = x.astype(mx.float32) @ w.T
        if "bias" in self:
            y = y + self.bias
        return y.astype(x.dtype)


class DequantizingEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        if _rows(x) < MIN_ROWS or self.biases is None:
            return super().as_linear(x)
        w = dequantize(self.weight, self.scales, self.biases, self.group_size, self.bits)
        return (x.astype(mx.float32) @ w.T).astype(x.dtype)


SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.QuantizedLinear: DequantizingLinear,
                           nn.QuantizedEmbedding: DequantizingEmbedding}


def _swap(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]]) -> int:
    swapped = []
    for path, module in model.named_modules():
        target = table.get(type(module))
        if target is None or getattr(module, "mode", "affine") != "affine":
            continue
        clone = target.__new__(target)
        clone.__dict__.update(module.__dict__)  # its settings (bits, group size, mode)
        dict.update(clone, module)  # its parameter arrays (an MLX module is a dict of them)
        swapped.append((path, clone))
    if swapped:
        model.update_modules(tree_unflatten(swapped))
    return len(swapped)


def install(model: nn.Module) -> int:
    """Swap `model`'s affine-quantized linears and embeddings for the dequantizing ones;
    returns how many were swapped."""
    return _swap(model, SWAPS)


def uninstall(model: nn.Module) -> int:
    return _swap(model, {v: k for k, v in SWAPS.items()})
