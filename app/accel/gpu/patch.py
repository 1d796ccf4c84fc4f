"""Route mlx-lm's attention through the GPU wing where it applies.

- A batched decode step (one query a row against mlx-lm's left-padded `BatchKVCache`,
  whose mask would take MLX's CUDA attention off its fused kernel): decode_attention.py.
- A short prefill (more than one query a row, few scores): prefill_attention.py, which
  builds no cuDNN graph for its shape.
Every other call (a single sequence's decode step, long prefills, quantized caches,
attention sinks, head sizes the kernel lacks) goes to mlx-lm's own function unchanged.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models import base
from mlx_lm.models.cache import BatchKVCache

from app.accel.gpu import decode_attention as kernel
from app.accel.gpu import prefill_attention as prefill
from app.accel.mlx_lm_patch import ModulePatch


def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any,
              scale: float, mask: Any, sinks: mx.array | None = None) -> mx.array:
    """mlx-lm's `scaled_dot_product_attention`, with batched decode steps on our kernel
    and short prefills on plain MLX ops."""
    if sinks is None and not hasattr(cache, "bits"):
        if type(cache) is BatchKVCache and kernel.supports(queries, keys):
            return kernel.decode_attention(queries, keys, values, cache.left_padding, scale)
        if prefill.applies(queries, keys):
            return prefill.attention(queries, keys, values, scale, mask)
    return base.scaled_dot_product_attention(queries, keys, values, cache=cache,
                                             scale=scale, mask=mask, sinks=sinks)


PATCH = ModulePatch("GPU attention (batched decode kernel, short prefills without cuDNN)",
                    lambda: {"scaled_dot_product_attention": attention})
