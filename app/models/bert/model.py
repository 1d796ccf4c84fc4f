"""A BERT encoder in MLX: embeddings, post-norm transformer layers, pooling.

Weight names follow Hugging Face's `BertModel` (`embeddings.*`, `encoder.layer.N.*`),
so a checkpoint's tensors load with `load_weights` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass(slots=True, frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"


class _Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, ids: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])
        # One segment: every token has type 0.
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + \
            self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.fused: nn.Linear | None = None

    def fuse(self) -> None:
        """One [3D, D] projection for q, k and v (one wider matmul runs faster than three);
        the separate weights are dropped, so memory holds one copy."""
        d = self.query.weight.shape[1]
        self.fused = nn.Linear(d, 3 * d)
        self.fused.weight = mx.concatenate([self.query.weight, self.key.weight,
                                            self.value.weight])
        self.fused.bias = mx.concatenate([self.query.bias, self.key.bias, self.value.bias])
        del self.query, self.key, self.value

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        if self.fused is None:
            return self.query(x), self.key(x), self.value(x)
        q, k, v = mx.split(self.fused(x), 3, axis=-1)
        return q, k, v


class _Output(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _Output(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Output(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        b, n, d = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(0, 2, 1, 3)

        q, k, v = (heads(t) for t in self.attention.self(x))
        ctx = mx.fast.scaled_dot_product_attention(
            q, k, v, scale=(d // self.heads) ** -0.5, mask=mask)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, n, d)
        h = self.attention.output(ctx, x)
        return self.output(nn.gelu(self.intermediate.dense(h)), h)


class _Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = [_Layer(cfg) for _ in range(cfg.num_hidden_layers)]


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "gelu":  # exact (erf) GELU, as BERT, MiniLM, bge and e5 use
            raise ValueError(f"hidden_act {cfg.hidden_act!r} is not supported (gelu only)")
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def fuse_projections(self) -> None:
        for layer in self.encoder.layer:
            layer.attention.self.fuse()


    def __call__(self, ids: mx.array, lengths: mx.array) -> mx.array:
        """Hidden states [B, L, D] of right-padded `ids` [B, L] (row i has lengths[i])."""
        valid = mx.arange(ids.shape[1])[None, :] < lengths[:, None]  # [B, L]
        # Padding keys get -inf-like scores; an additive mask keeps one fused kernel.
        mask = mx.where(valid, 0.0, -1e9).astype(mx.float32)[:, None, None, :]
        x = self.embeddings(ids)
        mask = mask.astype(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x
