"""Which device MLX computes on: the loaders pick compute dtypes by it."""

from __future__ import annotations

import mlx.core as mx


def on_cpu() -> bool:
    """True when MLX computes on the CPU (the `mlx[cpu]` wheel, or a forced CPU device)."""
    return bool(mx.default_device() == mx.cpu)


def on_cuda() -> bool:
    """True when MLX computes on an NVIDIA GPU (the `mlx[cuda]` wheels)."""
    return bool(mx.default_device() == mx.gpu and mx.cuda.is_available())
