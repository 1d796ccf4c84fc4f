"""nn.Linear that multiplies few rows through gemv.py's kernel (opt-in: gpu_rows_matmul).

A decode step feeds each linear layer one row per running stream. `RowsLinear` computes
x @ W.T with the wing's kernel where it measured ahead of MLX's matmul
(bench/results/gpu-rows-matmul.md): 2 to `gemv.MAX_ROWS` rows against a weight of at most
`ROUTED_MAX_ELEMENTS` (MLX's GEMM is slow for those; at one row MLX's own matrix-vector
kernel and on larger weights its GEMM read at full speed); otherwise (one row, prefill,
larger batches, float32 or odd shapes) exactly as nn.Linear. Swapped in place by
`install(model)` (app/accel/module_swap.py: the same arrays, nothing copied).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from app.accel.gpu import gemv
from app.accel.module_swap import swap_modules

ROUTED_MIN_ROWS = 2
ROUTED_MAX_ELEMENTS = 4096 * 4096


def routed(rows: mx.array, weight: mx.array) -> bool:
    """Whether this matmul goes through the wing's kernel (see the module's docstring)."""
    return rows.shape[0] >= ROUTED_MIN_ROWS and weight.size <= ROUTED_MAX_ELEMENTS and \
        gemv.supports(rows, weight)


class RowsLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        rows = x.reshape(-1, x.shape[-1])
        if not routed(rows, self.weight):
            return super().__call__(x)
        y = gemv.rows_matmul(rows, self.weight).reshape(*x.shape[:-1], -1)
        return y + self.bias if "bias" in self else y


def install(model: nn.Module) -> int:
    """Swap `model`'s nn.Linear layers for RowsLinear; returns how many."""
    return swap_modules(model, {nn.Linear: RowsLinear})


def uninstall(model: nn.Module) -> int:
    return swap_modules(model, {RowsLinear: nn.Linear})
