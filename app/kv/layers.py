"""The arrays of a KV entry: per-layer (keys, values) and how they are cut and copied."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import mlx.core as mx

if TYPE_CHECKING:
    from app.kv.records import KVEntry

Layers = list[tuple[mx.array, mx.array]]
"""Per layer (keys, values), [1, kv_heads, T, head_dim]."""
# Axis of the token dimension in [1, kv_heads, T, head_dim].
SEQ_AXIS = 2


def snapshot_layers(layers: Sequence[tuple[mx.array, mx.array]], length: int) -> Layers:
    """Compact, evaluated copies of the first `length` positions of each layer.

    A lazy slice of a step-padded KVCache buffer would keep the whole buffer alive
    while `nbytes` reports only the slice; contiguous copies make the budget honest.
    """
    out = [
        (mx.contiguous(k[:, :, :length, :]), mx.contiguous(v[:, :, :length, :]))
        for k, v in layers
    ]
    mx.eval([a for kv in out for a in kv])
    return out


def prefix_layers(entry: KVEntry, length: int) -> Layers:
    """Lazy views of the entry's first `length` positions (to seed a request's cache)."""
    if length >= len(entry.tokens):
        return list(entry.layers)
    return prefix_of(entry.layers, length)


def prefix_of(layers: Layers, length: int) -> Layers:
    """Lazy views of the first `length` positions of each layer."""
    return [(k[:, :, :length, :], v[:, :, :length, :]) for k, v in layers]
