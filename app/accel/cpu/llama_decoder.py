"""Decode steps of Llama-family chat models in numpy, on the CPU.

A decode step multiplies a few rows (one per running stream) by every weight, so it is
bound by reading the weights. Through MLX each matmul is an OpenBLAS sgemm that first
packs the whole weight; with `PanelMatmul` (app/accel/cpu/panels.py) the weights are
read once, as they lie. For SmolLM2-135M in float32 a batch-8 step took ~48 ms this way
against 80-110 ms through mlx-lm, one row ~40 ms against ~60 (`bench/micro_cpu_decode.py`).

Prefill stays in MLX (its matmuls have hundreds of rows and run at full sgemm speed), and
so does everything else about the cache: this module reads and writes the K/V buffers of
mlx-lm's `BatchKVCache` in place, through numpy views of their memory, and keeps the
cache's bookkeeping (`_idx`, `offset`) as mlx-lm would. It takes only what it can
reproduce exactly: llama/mistral/qwen2/qwen3, float32 `nn.Linear` weights, plain or
Llama-3 RoPE, no sliding window; `build` returns None for anything else and the caller
keeps the MLX path.

The panels are a second copy of the weights (MLX's prefill needs its own layout: through
panels its matmuls ran 11-60% slower). So the copy is made only while it takes at most
a quarter of the memory available; a bigger model decodes through MLX.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache
from mlx_lm.models.rope_utils import Llama3RoPE

from app.accel.cpu import native, quantized
from app.accel.cpu.fused_step import Dims, FusedStep
from app.accel.cpu.kernels import softmax_np_
from app.accel.cpu.panels import PanelMatmul
from app.accel.cpu.quantized import QuantizedMatmul, QuantizedWeight
from app.accel.cpu.quantized_prefill import SWAPS
from app.kv.sizing import meminfo_available

logger = logging.getLogger(__name__)

# one block shape: qwen2 adds q/k/v biases, qwen3 RMSNorms of q and k per head
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MAX_ROWS = 8  # panels are sized for up to this many rows (more still work, a little slower)
MAX_MEMORY_FRACTION = 0.25  # of MemAvailable, for the panel copy of the weights
PREFILL_MAX_ROWS = 512  # prompt chunks up to this many tokens go through prefill()
GEMM_ROWS = 48  # from this many rows prefill() multiplies through qgemm.c's GEMM
MASKED = np.float32(-1e30)
QUANTIZED_TYPES = (*SWAPS, *SWAPS.values())  # MLX's, and ours for prefill
OWNED_ATTR = "_mlxd_owned"  # set on a (Batch)KVCache: the K/V arrays we may write into


Matmul = PanelMatmul | QuantizedMatmul


@dataclass(slots=True)
class _Layer:
    attn_norm: np.ndarray
    qkv: Matmul  # q | k | v, one read of the input
    out: Matmul
    mlp_norm: np.ndarray
    gate_up: Matmul  # gate | up
    down: Matmul
    head_norms: tuple[np.ndarray, np.ndarray, np.float32] | None = None
    """qwen3: RMSNorm weights of each q head and each k head, and their eps."""


class CpuLlamaDecoder:
    """One decode step for every row of a `BatchKVCache` batch, in numpy."""

    def __init__(self, model: Any, int8: bool = False) -> None:
        self.int8 = int8
        args = model.args
        body = model.model
        attn = body.layers[0].self_attn
        self.heads, self.kv_heads = attn.n_heads, attn.n_kv_heads
        self.head_dim = _head_dim(attn)
        self.scale = np.float32(attn.scale)
        self.eps = np.float32(args.rms_norm_eps)
        self.inv_freq, self.rope_scale = _rope_frequencies(attn.rope, self.head_dim)
        embed = body.embed_tokens
        self.embedding: np.ndarray | QuantizedWeight = \
            QuantizedWeight.of(embed) if _is_quantized(embed) else _f32(embed.weight)
        self.norm = _f32(body.norm.weight)
        self.layers = [self._layer(block) for block in body.layers]
        self.head = self._stacked([embed if args.tie_word_embeddings else model.lm_head])
        # its attention and elementwise kernels (decode.c), else numpy's
        self._native = native.library()
        self._threads = self._native.qmatmul_threads(quantized.workers()) \
            if self._native is not None else 1
        # every projection quantized (and no per-head norms): the layers in one C call
        self._fused = FusedStep.build(
            self.layers, self.head, self.norm,
            Dims(int(self.norm.shape[0]), self.heads, self.kv_heads, self.head_dim,
                 self.layers[0].gate_up.n_out // 2),
            self.eps, self.scale, self._threads)
        # prompt chunks of up to PREFILL_MAX_ROWS tokens in one C call as well, where the
        # causal attention kernel exists (AVX-512); qgemm.c's GEMM from GEMM_ROWS rows
        lib = self._native
        self._prefill_rows = PREFILL_MAX_ROWS if self._fused is not None and lib is not None \
            and lib.prefill_attention_available() and self.head_dim % 16 == 0 else 0
        self._gemm_rows = GEMM_ROWS if lib is not None and lib.qgemm_available() else 0

    @staticmethod
    def build(model: Any, available: int | None = None, int8: bool = False
              ) -> CpuLlamaDecoder | None:
        """The decoder for `model`, or None (logged) when it can't or shouldn't run it;
        `available`: bytes of memory free for the copy (default: MemAvailable); `int8`:
        quantized weights meet int8 activations where the CPU has VNNI (quantized.py)."""
        reason = _unsupported(model)
        if reason is None:
            copied = _panel_bytes(model)
            free = available if available is not None else meminfo_available()
            if copied and (free is None or copied > MAX_MEMORY_FRACTION * free):
                reason = (f"a {copied / (1 << 20):.0f} MiB panel copy of the weights does "
                          f"not fit in a quarter of the free memory")
        if reason:
            logger.info("numpy decode steps off for this model: %s", reason)
            return None
        decoder = CpuLlamaDecoder(model, int8)
        logger.info("decode steps in numpy: %s", decoder.describe())
        return decoder

    def describe(self) -> str:
        mats = [self.head] + [m for la in self.layers for m in (la.qkv, la.out, la.gate_up,
                                                                 la.down)]
        kinds = sorted({(f"{m.bits}-bit kernel" + (" (int8 activations)" if m.int8 else ""))
                        if isinstance(m, QuantizedMatmul) else "float32 panels" for m in mats})
        return " and ".join(kinds)

    def _layer(self, block: Any) -> _Layer:
        a, m = block.self_attn, block.mlp
        q_norm: Any = getattr(a, "q_norm", None)
        k_norm: Any = getattr(a, "k_norm", None)
        return _Layer(
            attn_norm=_f32(block.input_layernorm.weight),
            qkv=self._stacked([a.q_proj, a.k_proj, a.v_proj]),
            out=self._stacked([a.o_proj]),
            mlp_norm=_f32(block.post_attention_layernorm.weight),
            gate_up=self._stacked([m.gate_proj, m.up_proj]),
            down=self._stacked([m.down_proj]),
            head_norms=None if q_norm is None else
            (_f32(q_norm.weight), _f32(k_norm.weight), np.float32(q_norm.eps)),
        )

    def _stacked(self, linears: list[Any]) -> Matmul:
        return _stacked(linears, self.int8)

    def supports(self, caches: list[Any]) -> bool:
        return all(type(c) is BatchKVCache and c.keys is not None for c in caches)

    @staticmethod
    def release(caches: list[Any]) -> None:
        """Forget the buffers this decoder wrote into (the MLX forward takes over and
        replaces them; holding on would keep a second copy of the cache alive)."""
        for c in caches:
            c.__dict__.pop(OWNED_ATTR, None)

    def step(self, tokens: np.ndarray, caches: list[BatchKVCache]) -> np.ndarray:
        """Logits [B, V] for one new token per row, tokens [B]; extends every cache."""
        if self._native is None:
            return self._step(tokens, caches)
        self._native.qmatmul_step(1)  # the kernel threads spin through the whole step
        try:
            return self._step(tokens, caches)
        finally:
            self._native.qmatmul_step(0)

    @property
    def prefill_rows(self) -> int:
        """The longest prompt chunk `prefill` takes (0: none, the model's MLX forward
        prefills)."""
        return self._prefill_rows

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        if isinstance(self.embedding, QuantizedWeight):
            return self.embedding.rows(tokens)
        return self.embedding[tokens]

    def prefills(self, cache: list[Any], rows: int) -> bool:
        """Whether `prefill` takes a chunk of `rows` tokens into this per-sequence cache."""
        return self._prefill_rows > 0 and rows <= self._prefill_rows and all(
            type(c) is KVCache and (c.keys is None or c.keys.dtype == mx.float32)
            for c in cache)

    def prefill(self, tokens: np.ndarray, cache: list[KVCache], sample: bool
                ) -> np.ndarray | None:
        """A prompt chunk of one sequence in one C call (step.c's prefill_layers): the
        cache extended by tokens [n]; logits [1, V] of the last one when `sample`."""
        assert self._fused is not None and self._native is not None
        n, pos = int(tokens.shape[0]), int(cache[0].offset)
        cos, sin = self._rope_tables((pos + np.arange(n, dtype=np.float32)) * self.rope_scale)
        x = self._embed(tokens)
        kv = [_sequence_buffers(c, pos + n, self.kv_heads, self.head_dim) for c in cache]
        self._native.qmatmul_step(1)
        try:
            x = self._fused.prefill(x, [k for k, _ in kv], [v for _, v in kv], pos,
                                    cos.reshape(n, -1), sin.reshape(n, -1), self._gemm_rows)
            for c in cache:
                c.offset = pos + n
            return self._fused.head(x[-1:]) if sample else None
        finally:
            self._native.qmatmul_step(0)

    def _step(self, tokens: np.ndarray, caches: list[BatchKVCache]) -> np.ndarray:
        b = tokens.shape[0]
        first = caches[0]
        offset = np.asarray(first.offset)  # per row: position of the new token
        positions = offset.astype(np.float32) * self.rope_scale
        # left padding: row b's keys before valid_from[b] are not attended to
        valid_from = np.ascontiguousarray(first.left_padding, dtype=np.int32)
        end = first._idx + 1
        cos, sin = self._rope_tables(positions)
        mask = None if self._native is not None else np.where(
            np.arange(end)[None, :] < valid_from[:, None], MASKED, np.float32(0)
        )[:, None, None, :]  # [B, 1, 1, end]
        x = self._embed(tokens)
        if self._fused is not None:
            kv = [_buffers(c) for c in caches]
            x = self._fused.run(x, [k for k, _ in kv], [v for _, v in kv], end - 1,
                                valid_from, cos, sin)
            _advance(caches, offset, end)
            return self._fused.head(x).reshape(b, -1)
        for layer, cache in zip(self.layers, caches, strict=True):
            keys, values = _buffers(cache)
            x = x + self._attention(layer, self._norm(x, layer.attn_norm), keys, values,
                                    end, cos, sin, valid_from, mask)
            x = x + layer.down(self._swiglu(layer.gate_up(self._norm(x, layer.mlp_norm))))
        _advance(caches, offset, end)
        return self.head(self._norm(x, self.norm)).reshape(b, -1)

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        if self._native is None:
            return _rms_norm(x, weight, self.eps)
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        self._native.rms_norm(x.ctypes.data, x.shape[0], x.shape[1], weight.ctypes.data,
                              self.eps, out.ctypes.data)
        return out

    def _swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        half = gate_up.shape[-1] // 2
        if self._native is None:
            return _silu(gate_up[:, :half]) * gate_up[:, half:]
        gate_up = np.ascontiguousarray(gate_up, dtype=np.float32)
        out = np.empty((gate_up.shape[0], half), np.float32)
        self._native.swiglu(gate_up.ctypes.data, gate_up.shape[0], half, out.ctypes.data)
        return out

    def _attention(self, layer: _Layer, x: np.ndarray, keys: np.ndarray, values: np.ndarray,
                   end: int, cos: np.ndarray, sin: np.ndarray, valid_from: np.ndarray,
                   mask: np.ndarray | None) -> np.ndarray:
        b = x.shape[0]
        h, hkv, d = self.heads, self.kv_heads, self.head_dim
        qkv = layer.qkv(x)
        lib = self._native
        if lib is not None and layer.head_norms is None:  # rotate and store in one C pass
            assert keys.flags.c_contiguous and values.flags.c_contiguous
            qkv = np.ascontiguousarray(qkv, dtype=np.float32)
            q = np.empty((b, h, d), np.float32)
            lib.rope_store(qkv.ctypes.data, b, h, hkv, d, cos.ctypes.data,
                           sin.ctypes.data, q.ctypes.data, keys.ctypes.data, values.ctypes.data,
                           keys.shape[2], end - 1)
            return layer.out(self._attend(q, keys, values, end, valid_from).reshape(b, h * d))
        qk = qkv[:, : (h + hkv) * d].reshape(b, h + hkv, d)
        if layer.head_norms is not None:
            q_w, k_w, eps = layer.head_norms
            qk = np.concatenate([_rms_norm(qk[:, :h], q_w, eps),
                                 _rms_norm(qk[:, h:], k_w, eps)], axis=1)
        qk = _rope(qk, cos, sin)
        keys[:, :, end - 1] = qk[:, h:]
        values[:, :, end - 1] = qkv[:, (h + hkv) * d :].reshape(b, hkv, d)
        if mask is None:
            out = self._attend(np.ascontiguousarray(qk[:, :h]), keys, values, end, valid_from)
        else:
            # grouped queries: the rep query heads of a kv head are rows of one matmul
            q = qk[:, :h].reshape(b, hkv, h // hkv, d) * self.scale
            scores = q @ keys[:, :, :end].transpose(0, 1, 3, 2)  # [B, Hkv, rep, end]
            scores += mask
            out = softmax_np_(scores) @ values[:, :, :end]  # [B, Hkv, rep, d]
        return layer.out(out.reshape(b, h * d))

    def _attend(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, end: int,
                valid_from: np.ndarray) -> np.ndarray:
        """The C kernel's attention (decode.c): q [B, H, d] -> [B, H, d]."""
        assert self._native is not None and keys.flags.c_contiguous and \
            values.flags.c_contiguous and q.dtype == keys.dtype == np.float32
        b, h, d = q.shape
        out = np.empty_like(q)
        scratch = np.empty((b, h, end), np.float32)
        rc = self._native.attend_mt(_ptr(q), b, h, self.kv_heads, d, _ptr(keys),
                                    _ptr(values), keys.shape[2],
                                    valid_from.ctypes.data_as(_I32P), end,
                                    float(self.scale), _ptr(out), _ptr(scratch), self._threads)
        if rc != 0:
            raise ValueError("the attention kernel refused its arguments")
        return out

    def _rope_tables(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angles = positions[:, None] * self.inv_freq[None, :]  # [B, d/2]
        return np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]


_F32P = ctypes.POINTER(ctypes.c_float)
_I32P = ctypes.POINTER(ctypes.c_int32)


def _ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_F32P)


def _unsupported(model: Any) -> str | None:
    args = getattr(model, "args", None)
    body = getattr(model, "model", None)
    if args is None or body is None or getattr(args, "model_type", None) not in SUPPORTED_TYPES:
        return f"model type {getattr(args, 'model_type', None)!r} is not one of {SUPPORTED_TYPES}"
    if getattr(body, "swa_idx", None) is not None:
        return "sliding-window layers"
    if getattr(body, "pipeline_size", 1) != 1:
        return "pipeline-parallel model"
    attn = body.layers[0].self_attn
    rope = attn.rope
    if type(rope) not in (nn.RoPE, Llama3RoPE) or rope.traditional \
            or rope.dims != _head_dim(attn):
        return f"RoPE variant {type(rope).__name__}"
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding):
            if type(module) not in QUANTIZED_TYPES or \
                    getattr(module, "mode", "affine") != "affine":
                return f"{name} is {type(module).__name__}"
            n_in = module.weight.shape[-1] * 32 // module.bits
            if not quantized.supported(module.bits, module.group_size, n_in):
                return f"{name} is quantized to {module.bits} bits in groups of " \
                       f"{module.group_size}"
            if not quantized.available():
                return f"{name} is quantized and the CPU kernels could not be built"
            continue
        if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            return f"{name} is {type(module).__name__}"
        if isinstance(module, nn.Linear | nn.Embedding) and module.weight.dtype != mx.float32:
            return f"{name} is {module.weight.dtype}"
    return None


def _advance(caches: list[Any], offset: np.ndarray, end: int) -> None:
    """The caches' bookkeeping after a step wrote position end - 1, as mlx-lm keeps it."""
    next_offset = mx.array(offset + 1)  # one evaluated array, not a growing lazy chain
    for c in caches:
        c._idx = end
        c.offset = next_offset


def _buffers(cache: Any) -> tuple[np.ndarray, np.ndarray]:  # a BatchKVCache
    """Writable numpy views of a layer's K/V with room for one more position.

    The first time a buffer is seen (a new batch, a row joined or left, growth) it is
    copied once into memory no other array references: MLX arrays may share a buffer (a
    slice of a bigger array), and writing in place must reach only this cache. The
    copies are remembered on the cache object, so they go when it goes.
    """
    need = cache._idx + 1
    fresh = None
    if need > cache.keys.shape[2]:  # grow: the padded copies are fresh buffers already
        grow = -(-need // BatchKVCache.step) * BatchKVCache.step - cache._idx
        pad = [(0, 0), (0, 0), (0, grow), (0, 0)]
        fresh = (mx.pad(cache.keys[..., : cache._idx, :], pad),
                 mx.pad(cache.values[..., : cache._idx, :], pad))
    return _owned(cache, fresh)


def _sequence_buffers(cache: KVCache, need: int, heads: int, head_dim: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Writable numpy views [Hkv, cap, d] of a per-sequence cache's K/V with room for
    `need` positions, in memory only this cache holds (as `_buffers`: a cache seeded from
    the store may share the store's arrays)."""
    keys, values = cache.keys, cache.values
    cap = -(-need // KVCache.step) * KVCache.step
    fresh = None
    if keys is None or values is None:
        fresh = (mx.zeros((1, heads, cap, head_dim), mx.float32),
                 mx.zeros((1, heads, cap, head_dim), mx.float32))
    elif need > keys.shape[2]:  # grow: the padded copies are fresh buffers
        grow = [(0, 0), (0, 0), (0, cap - cache.offset), (0, 0)]
        fresh = (mx.pad(keys[..., : cache.offset, :], grow),
                 mx.pad(values[..., : cache.offset, :], grow))
    k, v = _owned(cache, fresh)
    return k[0], v[0]


def _owned(cache: Any, fresh: tuple[mx.array, mx.array] | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Numpy views of `cache`'s K/V in memory only it holds: `fresh` (new buffers) when
    given; else the cache's own arrays if they are the ones we made, or a copy of them
    once (numpy view in, fresh MLX buffer out, contiguous for the C kernels)."""
    if fresh is None:
        owned = getattr(cache, OWNED_ATTR, None)
        if owned is not None and owned[0] is cache.keys and owned[1] is cache.values:
            return np.asarray(cache.keys), np.asarray(cache.values)
        fresh = (mx.array(np.ascontiguousarray(cache.keys)),
                 mx.array(np.ascontiguousarray(cache.values)))
    mx.eval(*fresh)
    cache.keys, cache.values = fresh
    setattr(cache, OWNED_ATTR, fresh)
    return np.asarray(cache.keys), np.asarray(cache.values)


def _rope_frequencies(rope: Any, head_dim: int) -> tuple[np.ndarray, np.float32]:
    """(inverse frequency per rotated pair, position scale) of nn.RoPE or Llama3RoPE."""
    if isinstance(rope, Llama3RoPE):  # angle = position / freqs (mx.fast.rope's freqs=)
        return (1.0 / np.asarray(rope._freqs, dtype=np.float32)).astype(np.float32), \
            np.float32(1.0)
    # nn.RoPE: base^(-2i/d), positions scaled by rope.scale
    half = np.arange(0, head_dim // 2, dtype=np.float32)
    return (rope.base ** (-half * 2.0 / head_dim)).astype(np.float32), np.float32(rope.scale)


def _head_dim(attn: Any) -> int:
    # llama keeps head_dim on the module; qwen2 only derives it
    return int(getattr(attn, "head_dim", attn.q_proj.weight.shape[0] // attn.n_heads))


def _f32(a: mx.array) -> np.ndarray:
    return np.asarray(a if a.dtype == mx.float32 else a.astype(mx.float32))


def _is_quantized(module: Any) -> bool:
    return isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding)


def _panel_bytes(model: Any) -> int:
    """Bytes the float32 panels copy (quantized weights are read where they lie)."""
    return sum(int(m.weight.nbytes) for _, m in model.named_modules()
               if isinstance(m, nn.Linear | nn.Embedding) and not _is_quantized(m))


def _stacked(linears: list[Any], int8: bool = False) -> Matmul:
    """Several projections of one input as one [in, sum(out)] matmul (an Embedding as
    the tied output projection)."""
    if all(_is_quantized(m) for m in linears) and \
            len({(m.bits, m.group_size) for m in linears}) == 1:
        return QuantizedMatmul.of(*linears, int8=int8)
    linears = [_float_linear(m) for m in linears]
    weight = np.concatenate([_f32(m.weight) for m in linears], axis=0).T
    biases = [_f32(m.bias) for m in linears if "bias" in m]
    bias = np.concatenate(biases) if len(biases) == len(linears) else None
    return PanelMatmul(weight, bias, max_rows=MAX_ROWS)


def _float_linear(module: Any) -> Any:
    """A float32 stand-in of a quantized module (a mixed stack; rare), else `module`."""
    if not _is_quantized(module):
        return module
    w = mx.dequantize(module.weight, module.scales, module.biases,
                      group_size=module.group_size, bits=module.bits).astype(mx.float32)
    stand_in = nn.Linear(w.shape[1], w.shape[0], bias="bias" in module)
    stand_in.weight = w
    if "bias" in module:
        stand_in.bias = module.bias
    return stand_in


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: np.float32) -> np.ndarray:
    return x * (1.0 / np.sqrt(np.square(x).mean(axis=-1, keepdims=True) + eps)) * weight


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [B, H, d] by half-split pairs (nn.RoPE, traditional=False)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x < -88: silu -> -0, as in MLX
        return x / (1.0 + np.exp(-x))
