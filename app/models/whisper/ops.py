"""The operations Whisper's model code calls, chosen once per loaded model.

MLX's own by default, on every device. A faster set for a device is injected at load
(`Whisper.use_ops`, from app/accel/choose.py), so the model code names no device and
holds no device checks: it calls `self.ops.gelu`, `self.ops.attention`, and the
decoding code asks `ops.window_steps` for decode steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

if TYPE_CHECKING:
    from app.models.whisper.model import Whisper

KVCache = list[tuple[mx.array, mx.array]]
"""Per decoder layer (keys, values) [B, H, T, dh]: the MLX decoder's self-attention cache,
or one window's cross-attention K/V."""

AttentionFn = Callable[[mx.array, mx.array, mx.array, float, "mx.array | str | None"], mx.array]


def mlx_attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
                  mask: mx.array | str | None) -> mx.array:
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)


class WindowSteps(Protocol):
    """Decoder forward passes over one window's audio features (cross K/V bound)."""

    def forward(self, tokens: np.ndarray, cache: Any | None,
                positions: list[int] | None = None) -> tuple[np.ndarray, Any]:
        """Logits [B, P, V] (float32 numpy) at `positions` of tokens [B, T] (default: the
        last), the tokens following `cache` (None: the start); and the extended cache."""

    def select(self, cache: Any, rows: list[int]) -> Any:
        """The cache of rows `rows` (beam reordering; a row repeated into samples)."""

    def batch(self, cache: Any) -> int:
        """Rows in `cache`."""


WindowStepsFactory = Callable[["Whisper", KVCache], "WindowSteps | None"]
"""(model, a window's cross K/V) -> decode steps for it, or None to use MLX's."""


@dataclass(slots=True, frozen=True)
class WhisperOps:
    gelu: Callable[[mx.array], mx.array] = nn.gelu
    attention: AttentionFn = mlx_attention
    project: Callable[[mx.array], np.ndarray] | None = None
    """hidden [B, P, d] -> logits [B*P, V] as float32 numpy; None: the tied embedding in MLX."""
    window_steps: WindowStepsFactory | None = None
    """Decode steps other than the MLX decoder's; None: always the MLX decoder."""
    name: str = "mlx"
    """For the load log line."""


MLX_OPS = WhisperOps()
