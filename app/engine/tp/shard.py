"""Split a Llama/Qwen-family model's layers across the ranks of a group (Megatron-style).

Each rank keeps a contiguous block of KV heads (with their query heads) and of the MLP's
hidden units: q/k/v and gate/up keep their rows, o and down their columns, and the
outputs of o and down are summed over the group. Embeddings, norms and the vocabulary
projection stay whole on every rank. Blocks may be uneven (SmolLM2-135M has 3 KV heads
for 2 ranks): rank 0 takes the larger ones, so its KV bytes per token are the group's
most and its admission budget holds on every rank.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from app.engine.tp.group import TPGroup

# mlx-lm model types whose attention and MLP have these module names and read their
# head counts from `n_heads`/`n_kv_heads` at call time.
SHARDABLE_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
MLP_UNIT = 64
"""MLP blocks are multiples of this many units where possible (quantization groups)."""


def blocks(n: int, parts: int) -> list[int]:
    """`n` split into `parts` contiguous sizes, the larger ones first."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class AllSum(nn.Module):
    """A row-parallel projection: this rank's partial product, summed over the group."""

    def __init__(self, inner: nn.Module, tp: TPGroup) -> None:
        super().__init__()
        self.inner = inner
        self._sum = tp.all_sum

    def __call__(self, x: mx.array) -> mx.array:
        return self._sum(self.inner(x))


def _keep_rows(linear: nn.Module, start: int, stop: int) -> None:
    for name in ("weight", "scales", "biases", "bias"):
        if name in linear:
            linear[name] = mx.contiguous(linear[name][start:stop])


def _keep_cols(linear: nn.Module, start: int, stop: int, rank: int) -> None:
    if "scales" in linear:  # quantized: packed words and per-group scales
        bits, group = int(linear.bits), int(linear.group_size)
        if start % group or stop % group:
            raise ValueError(f"column block {start}:{stop} splits a quantization group")
        per_word = 32 // bits
        linear["weight"] = mx.contiguous(linear["weight"][:, start // per_word:stop // per_word])
        for name in ("scales", "biases"):
            linear[name] = mx.contiguous(linear[name][:, start // group:stop // group])
    else:
        linear["weight"] = mx.contiguous(linear["weight"][:, start:stop])
    if "bias" in linear and rank != 0:  # added once, by rank 0, before the sum
        linear["bias"] = mx.zeros_like(linear["bias"])


def _span(sizes: list[int], rank: int, unit: int) -> tuple[int, int]:
    start = sum(sizes[:rank]) * unit
    return start, start + sizes[rank] * unit


def shard_model(model: Any, tp: TPGroup) -> None:
    """Keep this rank's shard of every layer (in place) and free the rest."""
    model_type = getattr(getattr(model, "args", None), "model_type", None)
    if model_type not in SHARDABLE_TYPES:
        raise ValueError(f"tensor parallelism supports {sorted(SHARDABLE_TYPES)} models, "
                         f"not {model_type!r}")
    rank, size = tp.rank, tp.size
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        n_heads, n_kv = int(attn.n_heads), int(attn.n_kv_heads)
        kv_sizes = blocks(n_kv, size)
        if min(kv_sizes) == 0:
            raise ValueError(f"{n_kv} KV heads cannot be split over {size} ranks")
        group = n_heads // n_kv
        head_dim = int(attn.k_proj["weight"].shape[0]) // n_kv  # rows: output features
        k0, k1 = _span(kv_sizes, rank, head_dim)
        q0, q1 = _span(kv_sizes, rank, head_dim * group)
        _keep_rows(attn.q_proj, q0, q1)
        _keep_rows(attn.k_proj, k0, k1)
        _keep_rows(attn.v_proj, k0, k1)
        _keep_cols(attn.o_proj, q0, q1, rank)
        attn.o_proj = AllSum(attn.o_proj, tp)
        attn.n_heads, attn.n_kv_heads = kv_sizes[rank] * group, kv_sizes[rank]

        hidden = int(mlp.gate_proj["weight"].shape[0])
        unit = MLP_UNIT if hidden % MLP_UNIT == 0 and hidden // MLP_UNIT >= size else 1
        m0, m1 = _span(blocks(hidden // unit, size), rank, unit)
        _keep_rows(mlp.gate_proj, m0, m1)
        _keep_rows(mlp.up_proj, m0, m1)
        _keep_cols(mlp.down_proj, m0, m1, rank)
        mlp.down_proj = AllSum(mlp.down_proj, tp)
    mx.eval(model.parameters())
