"""nn.Linear that multiplies few rows through gemv.py's kernel (opt-in: gpu_rows_matmul).

A decode step feeds each linear layer one row per running stream; with at most
`gemv.MAX_ROWS` of them `RowsLinear` computes x @ W.T with the wing's kernel, otherwise
(prefill, larger batches, float32 or odd shapes) exactly as nn.Linear. Swapped in place by
`install(model)` (app/accel/module_swap.py: the same arrays, nothing copied).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from app.accel.gpu import gemv
from app.accel.module_swap import swap_modules


class RowsLinear(nn.Linear):
    def __call__(self, x: mx.array) -> mx.array:
        rows = x.reshape(-1, x.shape[-1])
        if not gemv.supports(rows, self.weight):
            return super().__call__(x)
        y = gemv.rows_matmul(rows, self.weight).reshape(*x.shape[:-1], -1)
        return y + self.bias if "bias" in self else y


def install(model: nn.Module) -> int:
    """Swap `model`'s nn.Linear layers for RowsLinear; returns how many."""
    return swap_modules(model, {nn.Linear: RowsLinear})


def uninstall(model: nn.Module) -> int:
    return swap_modules(model, {RowsLinear: nn.Linear})
