"""Decode steps of one window through the MLX decoder (every device; the reference)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from app.models.whisper.model import Whisper
from app.models.whisper.ops import KVCache


class MlxWindowSteps:
    """`WindowSteps` (app/models/whisper/ops.py) over the MLX `TextDecoder`; caches are
    per-layer (K, V) lists."""

    def __init__(self, model: Whisper, cross_kv: KVCache) -> None:
        self.model = model
        self.cross_kv = cross_kv

    def forward(self, tokens: np.ndarray, cache: KVCache | None,
                positions: list[int] | None = None) -> tuple[np.ndarray, KVCache]:
        hidden, new_cache = self.model.decoder.hidden(
            mx.array(tokens), self.cross_kv, cache, positions)
        return self.model.numpy_logits(hidden, new_cache), new_cache

    def select(self, cache: KVCache, rows: list[int]) -> KVCache:
        index = mx.array(rows)
        return [(k[index], v[index]) for k, v in cache]

    def batch(self, cache: KVCache) -> int:
        return int(cache[0][0].shape[0])
