"""Route mlx-lm's attention through decode_attention.py where it applies.

Only a batched decode step needs it: one query a row against mlx-lm's left-padded
`BatchKVCache`, whose mask would take MLX's CUDA attention off its fused kernel. Every
other call (prefill, a single sequence's `KVCache`, quantized caches, attention sinks,
head sizes the kernel lacks) goes to mlx-lm's own function unchanged.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models import base
from mlx_lm.models.cache import BatchKVCache

from app.accel.gpu import decode_attention as kernel
from app.accel.mlx_lm_patch import ModulePatch


def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any,
              scale: float, mask: Any, sinks: mx.array | None = None) -> mx.array:
    """mlx-lm's `scaled_dot_product_attention`, with batched decode steps on our kernel."""
    if sinks is None and type(cache) is BatchKVCache and kernel.supports(queries, keys):
        return kernel.decode_attention(queries, keys, values, cache.left_padding, scale)
    return base.scaled_dot_product_attention(queries, keys, values, cache=cache,
                                             scale=scale, mask=mask, sinks=sinks)


PATCH = ModulePatch("GPU decode attention over left-padded batches",
                    lambda: {"scaled_dot_product_attention": attention})
