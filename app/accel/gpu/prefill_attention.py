"""Attention of a short prefill as plain MLX ops, so no cuDNN graph is built for it.

On CUDA, MLX sends a prefill's attention (more than one query a row) to cuDNN, whose
graphs are keyed on the exact shape: every new pair of query and key lengths builds one,
which takes far longer than the attention itself when the prompt is short. A server sees a
new pair on nearly every request (each turn 2 adds a few tokens to a cache of its own
length), so that build lands in the first token's time. Up to `MAX_SCORES` scores the
matmul-softmax-matmul below does the same work with kernels compiled once for all shapes;
longer prefills keep cuDNN, where its fused kernel earns back the build.

Masked scores are a large finite number, not -inf: a fully masked row (a left-padded
position of a batch) then gives finite values, as MLX's own fallback does.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

# B * H * queries * keys at most (float32 scores: 512 MB); longer prefills go to cuDNN.
MAX_SCORES = 1 << 27
MASKED = -1e30


def applies(queries: mx.array, keys: mx.array) -> bool:
    b, h, length, _ = queries.shape
    return length > 1 and b * h * length * keys.shape[2] <= MAX_SCORES \
        and h % keys.shape[1] == 0


def attention(queries: mx.array, keys: mx.array, values: mx.array, scale: float,
              mask: Any) -> mx.array:
    """softmax(q kᵀ * scale + mask) v for q [B, H, L, D], k/v [B, Hkv, S, D]; mask None,
    "causal" (the last L of S positions) or an array broadcasting to [B, 1|H, L, S]."""
    b, h, length, d = queries.shape
    hkv, s = keys.shape[1], keys.shape[2]
    rep = h // hkv
    q = (queries * scale).reshape(b, hkv, rep * length, d)
    scores = (q @ keys.swapaxes(-1, -2)).astype(mx.float32).reshape(b, hkv, rep, length, s)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unsupported attention mask {mask!r}")
        visible = mx.arange(s - length, s)[:, None] >= mx.arange(s)[None]
        scores = mx.where(visible, scores, MASKED)
    elif mask is not None:
        m = mask  # [L, S] broadcasts as it is; [B, 1|H, L, S] gets the grouped-head axes
        if m.ndim == 4:
            m = m.reshape(m.shape[0], 1, 1, *m.shape[2:]) if m.shape[1] == 1 \
                else m.reshape(m.shape[0], hkv, rep, *m.shape[2:])
        scores = mx.where(m, scores, MASKED) if m.dtype == mx.bool_ \
            else scores + m.astype(mx.float32)
    probs = mx.softmax(scores, axis=-1).astype(values.dtype)
    return (probs.reshape(b, hkv, rep * length, s) @ values).reshape(b, h, length, d)
