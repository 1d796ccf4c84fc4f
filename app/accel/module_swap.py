"""Swap a model's modules for subclasses of ours in place, sharing their arrays.

A wing that changes how a kind of layer computes (the CPU's dequantizing prefill, the
GPU's few-row matmul) replaces each such module by an instance of its subclass holding the
very same parameter arrays and settings: nothing is copied, and swapping back with the
reversed table restores MLX's classes.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.nn as nn
from mlx.utils import tree_unflatten


def swap_modules(model: nn.Module, table: dict[type[nn.Module], type[nn.Module]],
                 accept: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Replace every module whose exact type is a key of `table` (and that `accept`s) by
    an instance of its value with the same arrays; returns how many were replaced."""
    swapped = []
    for path, module in model.named_modules():
        target = table.get(type(module))
        if target is None or not accept(module):
            continue
        clone = target.__new__(target)
        clone.__dict__.update(module.__dict__)  # its settings (bits, group size, mode)
        dict.update(clone, module)  # its parameter arrays (an MLX module is a dict of them)
        swapped.append((path, clone))
    if swapped:
        model.update_modules(tree_unflatten(swapped))
    return len(swapped)
