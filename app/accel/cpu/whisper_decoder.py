"""Whisper's text decoder in numpy, for decode steps on the CPU.

A beam-search step pushes 5 rows through 4 small layers: ~200 MLX ops of a few
microseconds of work each, plus sgemm calls that pack every weight before reading it.
Here every weight is a `PanelMatmul` (app/accel/cpu/panels.py), read once at memory
speed, and the rest is a few dozen numpy calls per layer; the self-attention K/V live in
preallocated buffers instead of being concatenated anew every step. One 5-beam step of
tiny.en, logits included: 19.9 ms through MLX, 7.5 ms here
(`bench/results/micro-cpu-decode.md`).

The math is the MLX decoder's (app/models/whisper/model.py), which stays the reference
and the GPU path; tests compare the two. `NumpyWindowSteps` is what the decoding code
sees: the `WindowSteps` of app/models/whisper/ops.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from app.accel.cpu.kernels import softmax_np_
from app.accel.cpu.panels import PanelMatmul
from app.accel.cpu.whisper_ops import Projection, gelu_np
from app.models.whisper.model import LAYER_NORM_EPS, Dense, Whisper
from app.models.whisper.ops import KVCache

KV_GROWTH = 64  # positions added to the self-attention buffers when they fill up
MAX_STEP_ROWS = 5  # panels sized for 5 rows: beam_size and best_of default to 5


@dataclass(slots=True)
class LayerWeights:
    attn_ln: tuple[np.ndarray, np.ndarray]
    qkv: PanelMatmul
    out: PanelMatmul
    cross_ln: tuple[np.ndarray, np.ndarray]
    q: PanelMatmul
    cross_out: PanelMatmul
    mlp_ln: tuple[np.ndarray, np.ndarray]
    fc1: PanelMatmul
    fc2: PanelMatmul


class SelfKV:
    """Every decoder layer's self-attention K/V: [B, H, capacity, dh] buffers whose first
    `length` positions are filled."""

    def __init__(self, keys: list[np.ndarray], values: list[np.ndarray], length: int) -> None:
        self.keys, self.values, self.length = keys, values, length

    @classmethod
    def empty(cls, layers: int, batch: int, heads: int, head_dim: int) -> SelfKV:
        def buf() -> np.ndarray:
            return np.empty((batch, heads, KV_GROWTH, head_dim), np.float32)
        return cls([buf() for _ in range(layers)], [buf() for _ in range(layers)], 0)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def select(self, rows: list[int]) -> SelfKV:
        """The cache of beams `rows` (repeats allowed): copies only the filled part."""
        index = np.asarray(rows)
        n = self.length
        return SelfKV([self._take(k, index, n) for k in self.keys],
                      [self._take(v, index, n) for v in self.values], n)

    @staticmethod
    def _take(buf: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
        out = np.empty((len(index), *buf.shape[1:]), np.float32)
        out[:, :, :n] = buf[index, :, :n]
        return out

    def reserve(self, extra: int) -> None:
        need = self.length + extra
        if need <= self.keys[0].shape[2]:
            return
        cap = -(-need // KV_GROWTH) * KV_GROWTH
        for bufs in (self.keys, self.values):
            for i, buf in enumerate(bufs):
                grown = np.empty((*buf.shape[:2], cap, buf.shape[3]), np.float32)
                grown[:, :, : self.length] = buf[:, :, : self.length]
                bufs[i] = grown


@dataclass(slots=True)
class CrossKV:
    """One window's cross-attention keys, transposed [H, dh, S], and values [H, S, dh],
    per layer; shared by every row (beam, sample) decoding that window."""

    keys_t: list[np.ndarray]
    values: list[np.ndarray]


class NumpyTextDecoder:
    """Numpy twin of the model's `TextDecoder`, its weights copied into panels."""

    def __init__(self, model: Whisper, projection: Projection) -> None:
        dec = model.decoder
        dims = model.dims
        self.heads = dims.n_text_head
        self.head_dim = dims.n_text_state // self.heads
        self.scale = np.float32(self.head_dim**-0.5)
        self.embedding = np.asarray(dec.token_embedding.weight, dtype=np.float32)
        self.positions = np.asarray(dec.positions, dtype=np.float32)
        self.ln = _norm(dec.ln)
        self.layers = [
            LayerWeights(
                attn_ln=_norm(b.attn_ln), qkv=_dense(b.attn.qkv), out=_dense(b.attn.out),
                cross_ln=_norm(b.cross_ln), q=_dense(b.cross.q), cross_out=_dense(b.cross.out),
                mlp_ln=_norm(b.mlp_ln), fc1=_dense(b.mlp.fc1), fc2=_dense(b.mlp.fc2))
            for b in dec.blocks
        ]
        self.projection = projection

    def window_steps(self, model: Whisper, cross_kv: KVCache) -> NumpyWindowSteps | None:
        """Decode steps over one window (a `WindowStepsFactory`); None when its cross K/V
        is not one window shared by every row."""
        cross = self.cross(cross_kv)
        return None if cross is None else NumpyWindowSteps(self, cross)

    def cross(self, cross_kv: list[tuple[mx.array, mx.array]]) -> CrossKV | None:
        """numpy views of a window's cross K/V; None when it is not one shared window."""
        if cross_kv[0][0].shape[0] != 1:
            return None
        mx.eval(cross_kv)
        return CrossKV(
            [np.ascontiguousarray(np.asarray(k)[0].transpose(0, 2, 1)) for k, _ in cross_kv],
            [np.asarray(v)[0] for _, v in cross_kv])

    def empty_cache(self, batch: int) -> SelfKV:
        return SelfKV.empty(len(self.layers), batch, self.heads, self.head_dim)

    def logits(self, tokens: np.ndarray, cross: CrossKV, cache: SelfKV,
               positions: list[int] | None = None) -> np.ndarray:
        """Logits [B, P, V] at `positions` of tokens [B, T] (default: the last), the
        tokens following the cache's positions; the cache is extended in place."""
        b, t = tokens.shape
        start = cache.length
        cache.reserve(t)
        x = self.embedding[tokens] + self.positions[start : start + t]
        for i, layer in enumerate(self.layers):
            x = x + self._self_attention(layer, _layer_norm(x, layer.attn_ln), cache, i)
            x = x + self._cross_attention(layer, _layer_norm(x, layer.cross_ln), cross, i)
            h = layer.fc1(_layer_norm(x, layer.mlp_ln))
            x = x + layer.fc2(gelu_np(h))
        cache.length = start + t
        x = x[:, -1:] if positions is None else x[:, positions]
        hidden = _layer_norm(x, self.ln)
        return self.projection.matmul(hidden.reshape(-1, hidden.shape[-1])).reshape(
            b, hidden.shape[1], -1)

    def _self_attention(self, layer: LayerWeights, x: np.ndarray, cache: SelfKV,
                        index: int) -> np.ndarray:
        b, t, d = x.shape
        heads, dh = self.heads, self.head_dim
        qkv = layer.qkv(x).reshape(b, t, 3, heads, dh).transpose(2, 0, 3, 1, 4)
        start = cache.length
        end = start + t
        keys, values = cache.keys[index], cache.values[index]
        keys[:, :, start:end] = qkv[1]
        values[:, :, start:end] = qkv[2]
        scores = (qkv[0] * self.scale) @ keys[:, :, :end].transpose(0, 1, 3, 2)
        if t > 1:  # causal: query start + i sees keys up to start + i
            future = np.arange(end)[None, :] > np.arange(start, end)[:, None]
            scores[..., future] = -np.inf
        out = softmax_np_(scores) @ values[:, :, :end]  # [B, H, T, dh]
        return layer.out(out.transpose(0, 2, 1, 3).reshape(b, t, d))

    def _cross_attention(self, layer: LayerWeights, x: np.ndarray, cross: CrossKV,
                         index: int) -> np.ndarray:
        b, t, d = x.shape
        heads, dh = self.heads, self.head_dim
        # every row attends to the same window: fold rows into one matmul per head
        q = (layer.q(x) * self.scale).reshape(b * t, heads, dh).transpose(1, 0, 2)
        out = softmax_np_(q @ cross.keys_t[index]) @ cross.values[index]  # [H, B*T, dh]
        return layer.cross_out(out.transpose(1, 0, 2).reshape(b, t, d))


class NumpyWindowSteps:
    """`WindowSteps` of one window through the numpy decoder; caches are `SelfKV`."""

    def __init__(self, decoder: NumpyTextDecoder, cross: CrossKV) -> None:
        self.decoder = decoder
        self.cross = cross

    def forward(self, tokens: np.ndarray, cache: SelfKV | None,
                positions: list[int] | None = None) -> tuple[np.ndarray, SelfKV]:
        if cache is None:
            cache = self.decoder.empty_cache(tokens.shape[0])
        return self.decoder.logits(tokens, self.cross, cache, positions), cache

    def select(self, cache: SelfKV, rows: list[int]) -> SelfKV:
        return cache.select(rows)

    def batch(self, cache: SelfKV) -> int:
        return cache.batch


def _dense(module: Dense) -> PanelMatmul:
    w = np.asarray(module.weight, dtype=np.float32)
    weight = w if module.input_major else w.T
    return PanelMatmul(weight, np.asarray(module.bias, dtype=np.float32),
                       max_rows=MAX_STEP_ROWS)


def _norm(module: object) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(module.weight, dtype=np.float32),  # type: ignore[attr-defined]
            np.asarray(module.bias, dtype=np.float32))  # type: ignore[attr-defined]


def _layer_norm(x: np.ndarray, params: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    centered = x - x.mean(axis=-1, keepdims=True)
    var = np.square(centered).mean(axis=-1, keepdims=True)
    centered *= 1.0 / np.sqrt(var + np.float32(LAYER_NORM_EPS))
    centered *= params[0]
    centered += params[1]
    return centered
