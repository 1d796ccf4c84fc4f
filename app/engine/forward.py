"""Model forward for prefill: logits only where a token is sampled.

`model(x)` applies the vocabulary projection to every position; for SmolLM2 that is a
49,152-wide matmul over each of a chunk's 512 rows (0.35 s here) whose result is then
thrown away except for the last row. For architectures whose logits are a plain
projection of the final hidden state, run the body, gather the rows that are
sampled, and project only those; anything else falls back to the full forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

# mlx-lm model types whose __call__ is exactly `head(self.model(x, cache))`.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _split(model: Any) -> tuple[Callable[..., mx.array], Callable[[mx.array], mx.array]] | None:
    args = getattr(model, "args", None)
    body = getattr(model, "model", None)
    if body is None or getattr(args, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    if getattr(args, "tie_word_embeddings", False):
        return body, body.embed_tokens.as_linear
    head = getattr(model, "lm_head", None)
    return (body, head) if head is not None else None


def prefill(model: Any, tokens: mx.array, cache: list[Any],
            rows: mx.array | None, project: bool = True) -> mx.array | None:
    """Run tokens[B, L] through the model, filling `cache`.

    rows=None: nothing is sampled (a middle chunk), no logits are computed when the model
    allows it. Otherwise rows[B] gives, per sequence, the position whose logits[B, V] are
    returned; project=False returns the final hidden states there instead, where the model
    allows it (a tensor-parallel rank that does not sample needs the layers, not the
    vocabulary projection).
    """
    parts = _split(model)
    if parts is None:
        logits = model(tokens, cache=cache)
        if rows is None:
            return None
        return logits[mx.arange(tokens.shape[0]), rows]
    body, head = parts
    hidden = body(tokens, cache)
    if rows is None:
        return None  # the caller evaluates the cache updates this chunk exists for
    last = hidden[mx.arange(tokens.shape[0]), rows]
    return head(last) if project else last


def decode(model: Any, inputs: mx.array, cache: list[Any], project: bool = True) -> mx.array:
    """One decode step of inputs[B, 1]: logits [B, V] (final hidden states where the model
    allows it and project=False)."""
    parts = _split(model) if not project else None
    if parts is None:
        return model(inputs, cache=cache)[:, -1, :]
    return parts[0](inputs, cache)[:, -1, :]


def warm_up(model: Any) -> None:
    """Run each shape family serving uses once: a single-sequence prefill, a left-padded
    batched prefill and a batched decode step.

    Kernels compiled on first use (the CPU's g++-built fused kernels behind mx.compile,
    cached per machine; GPU kernels) are then built while the model loads, not inside a
    user's first request: here the first 1k-token prompt after a fresh install took 5.8 s
    instead of 3.5 s.
    """
    single = make_prompt_cache(model)
    mx.eval(prefill(model, mx.array([[1, 2, 3, 4]]), single, mx.array([3])))
    batch = [BatchKVCache([0, 2]) for _ in single]
    mx.eval(model(mx.array([[1, 2, 3, 4], [0, 0, 1, 2]]), cache=batch)[:, -1])
    mx.eval(model(mx.array([[5], [6]]), cache=batch)[:, -1])
