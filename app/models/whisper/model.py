"""Whisper encoder/decoder in MLX, with a per-window cross-attention K/V and a decoder KV cache.

Attention projections are stored fused (self: q|k|v, cross: k|v), as CTranslate2 keeps
them: one matmul per projection group matters for single-token decode on the CPU.
GELU and attention go through the model's `ops` (app/models/whisper/ops.py): MLX's own
unless faster ones were injected at load.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from app.models.whisper.ops import MLX_OPS, KVCache, WhisperOps
from app.models.whisper.steps import Steps, run_to_end

logger = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-5
MAX_TIMESCALE = 10_000  # sinusoidal encoder positions, as Whisper was trained with
# The encoder's self-attention runs in this many query blocks, one pause after each: a
# block's whole 1500x1500 attention is ~0.16 s of tiny.en on a 2-core CPU, too long for
# one turn between chat steps.
ENCODER_ATTENTION_PARTS = 2


@dataclass(slots=True, frozen=True)
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


class Dense(nn.Module):
    """A linear layer whose weight can be stored input-major ([in, out]) after loading.

    Loaders fill the usual [out, in] weight; decode steps multiply a few rows by it, and
    with the weight as [in, out] a CPU BLAS runs that ~3x faster at one row (a streaming
    gemv instead of a transposed one).
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = mx.zeros((n_out, n_in))
        self.bias = mx.zeros((n_out,))
        self.input_major = False

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight if self.input_major else self.weight.T
        return mx.addmm(self.bias, x, w)

    def make_input_major(self) -> None:
        if not self.input_major:
            self.weight = mx.contiguous(self.weight.T)
            self.input_major = True


def sinusoids(length: int, channels: int) -> mx.array:
    """Encoder position table [length, channels]: sin half then cos half."""
    increment = math.log(MAX_TIMESCALE) / (channels // 2 - 1)
    inv = mx.exp(-increment * mx.arange(channels // 2, dtype=mx.float32))
    t = mx.arange(length, dtype=mx.float32)[:, None] * inv[None, :]
    return mx.concatenate([mx.sin(t), mx.cos(t)], axis=1)


def _heads(x: mx.array, n_head: int) -> mx.array:
    b, t, d = x.shape
    return x.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)


def _merge(x: mx.array) -> mx.array:
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


class SelfAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.ops = MLX_OPS
        self.n_head = n_head
        self.scale = (n_state // n_head) ** -0.5
        self.qkv = Dense(n_state, 3 * n_state)
        self.out = Dense(n_state, n_state)

    def __call__(
        self,
        x: mx.array,
        cache: tuple[mx.array, mx.array] | None = None,
        mask: mx.array | str | None = None,
    ) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        q, k, v = mx.split(self.qkv(x), 3, axis=-1)
        q, k, v = (_heads(t, self.n_head) for t in (q, k, v))
        if cache is not None:
            k = mx.concatenate([cache[0], k], axis=2)
            v = mx.concatenate([cache[1], v], axis=2)
        o = self.ops.attention(q, k, v, self.scale, mask)
        return self.out(_merge(o)), (k, v)

    def steps(self, x: mx.array, parts: int) -> Steps[mx.array]:
        """Unmasked, uncached `__call__`, evaluated and paused after each of `parts`
        blocks of queries (every block attends to all of K/V)."""
        q, k, v = mx.split(self.qkv(x), 3, axis=-1)
        q, k, v = (_heads(t, self.n_head) for t in (q, k, v))
        length = q.shape[2]
        size = -(-length // parts)
        blocks = []
        for start in range(0, length, size):
            o = self.ops.attention(q[:, :, start : start + size], k, v, self.scale, None)
            mx.eval(o)
            blocks.append(o)
            yield
        return self.out(_merge(mx.concatenate(blocks, axis=2)))


class CrossAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.ops = MLX_OPS
        self.n_head = n_head
        self.scale = (n_state // n_head) ** -0.5
        self.q = Dense(n_state, n_state)
        self.kv = Dense(n_state, 2 * n_state)
        self.out = Dense(n_state, n_state)

    def project_kv(self, audio: mx.array) -> tuple[mx.array, mx.array]:
        k, v = mx.split(self.kv(audio), 2, axis=-1)
        # contiguous once per window, so every decode step reads it without a copy
        return mx.contiguous(_heads(k, self.n_head)), mx.contiguous(_heads(v, self.n_head))

    def __call__(self, x: mx.array, kv: tuple[mx.array, mx.array]) -> mx.array:
        k, v = kv
        b, t, _ = x.shape
        q = _heads(self.q(x), self.n_head)
        if k.shape[0] == 1 and b > 1:
            # Beams share one window's K/V: fold them into the query axis instead of
            # tiling the 1500-frame K/V per beam.
            h, dh = q.shape[1], q.shape[3]
            q = q.transpose(1, 0, 2, 3).reshape(1, h, b * t, dh)
            o = self.ops.attention(q, k, v, self.scale, None)
            o = o.reshape(h, b, t, dh).transpose(1, 0, 2, 3)
        else:
            o = self.ops.attention(q, k, v, self.scale, None)
        return self.out(_merge(o))

    def weights(self, x: mx.array, kv: tuple[mx.array, mx.array]) -> mx.array:
        """Attention probabilities [B, H, T, S]; word alignment reads them."""
        q = _heads(self.q(x), self.n_head)
        scores = (q * self.scale) @ kv[0].transpose(0, 1, 3, 2)
        return mx.softmax(scores, axis=-1, precise=True)


class MLP(nn.Module):
    def __init__(self, n_state: int) -> None:
        super().__init__()
        self.ops = MLX_OPS
        self.fc1 = Dense(n_state, 4 * n_state)
        self.fc2 = Dense(4 * n_state, n_state)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.ops.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(n_state, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(n_state, n_head)
        self.mlp_ln = nn.LayerNorm(n_state, eps=LAYER_NORM_EPS)
        self.mlp = MLP(n_state)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.attn(self.attn_ln(x))[0]
        return x + self.mlp(self.mlp_ln(x))


class DecoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(n_state, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(n_state, n_head)
        self.cross_ln = nn.LayerNorm(n_state, eps=LAYER_NORM_EPS)
        self.cross = CrossAttention(n_state, n_head)
        self.mlp_ln = nn.LayerNorm(n_state, eps=LAYER_NORM_EPS)
        self.mlp = MLP(n_state)

    def __call__(
        self,
        x: mx.array,
        cross_kv: tuple[mx.array, mx.array],
        cache: tuple[mx.array, mx.array] | None,
        mask: mx.array | str | None,
    ) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        h, new_cache = self.attn(self.attn_ln(x), cache, mask)
        x = x + h
        x = x + self.cross(self.cross_ln(x), cross_kv)
        return x + self.mlp(self.mlp_ln(x)), new_cache


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.ops = MLX_OPS
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.positions = sinusoids(dims.n_audio_ctx, d)
        self.blocks = [EncoderBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer)]
        self.ln_post = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel [B, n_mels, frames] -> audio features [B, frames // 2, n_audio_state]."""
        return run_to_end(self.steps(mel))

    def steps(self, mel: mx.array) -> Steps[mx.array]:
        """`__call__`, evaluated and paused after the convolutions, after each part of a
        block's attention (ENCODER_ATTENTION_PARTS) and after its MLP: each ~0.08 s of
        tiny.en on a 2-core CPU, where a whole block is ~0.25 s."""
        x = self.ops.gelu(self.conv1(mel.transpose(0, 2, 1)))
        x = self.ops.gelu(self.conv2(x))
        x = x + self.positions[: x.shape[1]]
        mx.eval(x)
        yield
        for block in self.blocks:
            x = x + (yield from block.attn.steps(block.attn_ln(x), ENCODER_ATTENTION_PARTS))
            x = x + block.mlp(block.mlp_ln(x))
            mx.eval(x)
            yield
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positions = mx.zeros((dims.n_text_ctx, d))
        self.blocks = [DecoderBlock(d, dims.n_text_head) for _ in range(dims.n_text_layer)]
        self.ln = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def __call__(
        self,
        tokens: mx.array,
        cross_kv: list[tuple[mx.array, mx.array]],
        cache: list[tuple[mx.array, mx.array]] | None = None,
        positions: list[int] | None = None,
    ) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
        """Logits [B, P, n_vocab] at `positions` of `tokens` [B, T] (default: the last),
        the tokens following `cache`'s positions; returns the extended cache too."""
        hidden, new_cache = self.hidden(tokens, cross_kv, cache, positions)
        return self.logits(hidden), new_cache

    def hidden(
        self,
        tokens: mx.array,
        cross_kv: list[tuple[mx.array, mx.array]],
        cache: list[tuple[mx.array, mx.array]] | None = None,
        positions: list[int] | None = None,
    ) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
        """Final hidden states [B, P, d] (after the last layer norm) and the new cache."""
        offset = 0 if not cache else cache[0][0].shape[2]
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positions[offset : offset + t]
        mask = "causal" if t > 1 else None
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cross_kv[i], cache[i] if cache else None, mask)
            new_cache.append(kv)
        x = x[:, -1:] if positions is None else x[:, mx.array(positions)]
        return self.ln(x), new_cache

    def logits(self, x: mx.array) -> mx.array:
        """Output projection, tied to the token embedding."""
        return self.token_embedding.as_linear(x)

    def alignment_pass(
        self, tokens: mx.array, cross_kv: list[tuple[mx.array, mx.array]], layers: list[int]
    ) -> tuple[dict[int, mx.array], mx.array]:
        """Cross-attention probabilities [B, H, T, S] of `layers`, and the final hidden
        states [B, T, d], for a whole token sequence in one pass (word alignment)."""
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positions[:t]
        weights = {}
        for i, block in enumerate(self.blocks):
            x = x + block.attn(block.attn_ln(x), None, "causal")[0]
            y = block.cross_ln(x)
            if i in layers:
                weights[i] = block.cross.weights(y, cross_kv[i])
            x = x + block.cross(y, cross_kv[i])
            x = x + block.mlp(block.mlp_ln(x))
        hidden = self.ln(x)
        mx.eval(weights, hidden)
        return weights, hidden


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.ops = MLX_OPS
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    def use_ops(self, ops: WhisperOps) -> None:
        """Compute with `ops` from now on (every module that calls one)."""
        self.ops = ops
        for _, module in self.named_modules():
            if hasattr(module, "ops"):
                module.ops = ops

    def encode(self, mel: mx.array) -> KVCache:
        """One window's cross-attention K/V per decoder layer; computed once, reused per token."""
        return run_to_end(self.encode_steps(mel))

    def encode_steps(self, mel: mx.array) -> Steps[KVCache]:
        """`encode`, evaluated and paused layer by layer (the engine's chat steps run in
        between)."""
        audio = yield from self.encoder.steps(mel)
        cross_kv = [block.cross.project_kv(audio) for block in self.decoder.blocks]
        mx.eval(cross_kv)
        yield  # the decoder's first pass is a unit of its own
        return cross_kv

    def numpy_logits(self, hidden: mx.array, *evaluate: object) -> np.ndarray:
        """Logits [B, P, V] as float32 numpy of final hidden states [B, P, d] (through
        `ops.project` when one is injected), evaluating `evaluate` in the same pass."""
        if self.ops.project is None:
            out = self.decoder.logits(hidden)
            mx.eval(out, *evaluate)
            return np.array(out, dtype=np.float32)
        mx.eval(hidden, *evaluate)
        return self.ops.project(hidden).reshape(*hidden.shape[:2], -1)

    def store_decoder_input_major(self) -> None:
        """Store the decoder's weights input-major (`Dense`): faster few-row matmuls on a
        CPU BLAS. Call once, after the weights are loaded: weight shapes become [in, out]."""
        for _, module in self.decoder.named_modules():
            if isinstance(module, Dense):
                module.make_input_major()
        mx.eval(self.decoder.parameters())

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865
