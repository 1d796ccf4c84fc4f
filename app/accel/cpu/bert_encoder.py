"""A BERT encoder forward in numpy for the CPU, over the MLX model's own weights (numpy
views: one copy in memory).

MLX's CPU backend pays a fixed cost per op and runs elementwise ops on one thread; a
sentence encoder's batches are small (a query: one row of ~15 tokens), so numpy's
lower per-call cost and the thread pool's split of GELU and attention serve it better
(bench/results/embeddings.md). Same math as app/models/bert/model.py, exact (erf) GELU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.accel.cpu.threads import run_parts, split_range
from app.accel.cpu.whisper_ops import GELU_BLOCK_FLOATS, gelu_np
from app.models.bert.model import BertEncoder

# Below this many tokens a batch runs on the calling thread (splitting costs more).
SPLIT_MIN_TOKENS = 256
MASKED = np.float32(-1e9)


@dataclass(slots=True)
class _Layer:
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    norm1: tuple[np.ndarray, np.ndarray]
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]


def _np(a: object) -> np.ndarray:
    out = np.asarray(a)
    if out.dtype != np.float32:
        raise ValueError("the numpy encoder runs float32 weights only")
    return out


class NumpyBertEncoder:
    """`forward(ids [B, L], lengths [B]) -> hidden [B, L, D]`, as `BertEncoder`'s."""

    def __init__(self, model: BertEncoder) -> None:
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.eps = np.float32(cfg.layer_norm_eps)
        emb = model.embeddings
        self.word = _np(emb.word_embeddings.weight)
        self.pos = _np(emb.position_embeddings.weight)
        self.type0 = _np(emb.token_type_embeddings.weight)[0]
        self.norm0 = _np(emb.LayerNorm.weight), _np(emb.LayerNorm.bias)
        self.layers = []
        for layer in model.encoder.layer:
            att = layer.attention
            fused = att.self.fused
            assert fused is not None, "BertEncoder.fuse_projections() runs at load"
            self.layers.append(_Layer(
                _np(fused.weight), _np(fused.bias),
                _np(att.output.dense.weight), _np(att.output.dense.bias),
                (_np(att.output.LayerNorm.weight), _np(att.output.LayerNorm.bias)),
                _np(layer.intermediate.dense.weight), _np(layer.intermediate.dense.bias),
                _np(layer.output.dense.weight), _np(layer.output.dense.bias),
                (_np(layer.output.LayerNorm.weight), _np(layer.output.LayerNorm.bias))))

    def __call__(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        b, n = ids.shape
        split = b * n >= SPLIT_MIN_TOKENS
        x = self.word[ids] + self.pos[:n] + self.type0
        x = self._norm(x.reshape(b * n, -1), self.norm0)
        mask = np.where(np.arange(n)[None, :] < lengths[:, None], np.float32(0), MASKED)
        mask = mask.astype(np.float32)[:, None, None, :]
        for p in self.layers:
            qkv = x @ p.qkv_w.T
            qkv += p.qkv_b
            ctx = self._attention(qkv.reshape(b, n, 3, self.heads, -1), mask, split)
            h = ctx.reshape(b * n, -1) @ p.out_w.T
            h += p.out_b
            h += x
            h = self._norm(h, p.norm1)
            up = h @ p.up_w.T
            up += p.up_b
            _gelu_(up, split)
            x = up @ p.down_w.T
            x += p.down_b
            x += h
            x = self._norm(x, p.norm2)
        return x.reshape(b, n, -1)

    def _norm(self, x: np.ndarray, params: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """LayerNorm over the last axis, in place."""
        x -= x.mean(axis=-1, keepdims=True)
        var = np.einsum("ij,ij->i", x, x)[:, None] / np.float32(x.shape[-1])
        x *= 1.0 / np.sqrt(var + self.eps)
        x *= params[0]
        x += params[1]
        return x

    def _attention(self, qkv: np.ndarray, mask: np.ndarray, split: bool) -> np.ndarray:
        """Masked softmax attention of qkv [B, L, 3, H, dh] -> [B, L, H, dh]."""
        b, n, _, h, dh = qkv.shape
        out = np.empty((b, n, h, dh), np.float32)
        scale = np.float32(dh ** -0.5)

        def rows(r: tuple[int, int]) -> None:
            part = qkv[r[0]:r[1]].transpose(2, 0, 3, 1, 4)  # [3, b, H, L, dh]
            scores = part[0] @ part[1].transpose(0, 1, 3, 2)
            scores *= scale
            scores += mask[r[0]:r[1]]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[r[0]:r[1]] = (scores @ part[2]).transpose(0, 2, 1, 3)

        run_parts(rows, split_range(b) if split else [(0, b)])
        return out


def _gelu_(a: np.ndarray, split: bool) -> None:
    flat = a.reshape(-1)

    def blocks(r: tuple[int, int]) -> None:
        for start in range(r[0], r[1], GELU_BLOCK_FLOATS):
            block = flat[start:min(start + GELU_BLOCK_FLOATS, r[1])]
            block[...] = gelu_np(block)

    run_parts(blocks, split_range(flat.size) if split else [(0, flat.size)])
