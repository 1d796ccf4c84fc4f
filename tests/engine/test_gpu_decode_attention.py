"""The GPU wing's attention (app/accel/gpu/): the decode kernel against MLX's own masked
attention, a batched decode through the patch against mlx-lm's, short prefills on plain
MLX ops against MLX's attention, and the dispatch that sends everything else to mlx-lm
untouched. Kernel cases run where MLX has CUDA; the rest anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import base, qwen3
from mlx_lm.models.cache import BatchKVCache, KVCache

from app.accel.cpu import mlx_lm_patch as cpu_patch
from app.accel.gpu import decode_attention as kernel
from app.accel.gpu import patch as gpu_patch
from app.accel.gpu import prefill_attention as prefill
from app.models.device import on_cuda

cuda = pytest.mark.skipif(not on_cuda(), reason="the kernel runs on an NVIDIA GPU")


def _reference(q: mx.array, k: mx.array, v: mx.array, start: list[int],
               scale: float) -> mx.array:
    """MLX's attention in float32 with the mask the batch cache would build."""
    valid = mx.arange(k.shape[2])[None, :] >= mx.array(start)[:, None]
    return mx.fast.scaled_dot_product_attention(
        q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32), scale=scale,
        mask=valid[:, None, None, :])


@cuda
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(8, 2, 128), (4, 4, 64), (16, 8, 256)])
@pytest.mark.parametrize("length", [1, 31, 33, 300, 1500])
def test_kernel_matches_masked_attention(dtype: mx.Dtype, heads: int, kv_heads: int,
                                         dim: int, length: int) -> None:
    mx.random.seed(length + dim)
    rows = 3
    start = [0, min(7, length - 1), length - 1]
    q = mx.random.normal((rows, heads, 1, dim)).astype(dtype)
    # keys and values as the cache hands them out: a slice of a larger buffer
    buffer_k = mx.random.normal((rows, kv_heads, length + 256, dim)).astype(dtype)
    buffer_v = mx.random.normal((rows, kv_heads, length + 256, dim)).astype(dtype)
    k, v = buffer_k[..., :length, :], buffer_v[..., :length, :]
    scale = dim ** -0.5
    got = kernel.decode_attention(q, k, v, mx.array(start), scale)
    want = _reference(q, k, v, start, scale)
    assert got.shape == q.shape and got.dtype == dtype
    assert mx.allclose(got.astype(mx.float32), want, atol=2e-2, rtol=2e-2).item()


def _bf16_qwen3() -> qwen3.Model:
    model = qwen3.Model(qwen3.ModelArgs(
        model_type="qwen3", hidden_size=256, num_hidden_layers=2, intermediate_size=512,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
        vocab_size=320, rope_theta=1e6, max_position_embeddings=4096,
        tie_word_embeddings=True))
    mx.random.seed(3)
    model.update(tree_unflatten([(n, (mx.random.normal(p.shape) * 0.3).astype(mx.bfloat16))
                                 for n, p in tree_flatten(model.parameters())]))
    mx.eval(model.parameters())
    return model


def _decode_logits(model: qwen3.Model, prompts: list[list[int]],
                   steps: int) -> list[mx.array]:
    """Logits of a left-padded batch's decode steps, every row fed the same fixed tokens
    (teacher-forced: a free-running greedy decode of random bf16 weights parts at the
    first near-tie, whichever correct attention computes it)."""
    width = max(map(len, prompts))
    pads = [width - len(p) for p in prompts]
    cache = [BatchKVCache(pads) for _ in model.layers]
    batch = mx.array([[0] * n + p for n, p in zip(pads, prompts, strict=True)])
    out = [model(batch, cache=cache)[:, -1].astype(mx.float32)]
    for i in range(steps):
        token = mx.array([[(31 * i + 7) % 320]] * len(prompts))
        out.append(model(token, cache=cache)[:, -1].astype(mx.float32))
    mx.eval(out)
    return out


@pytest.fixture
def gpu_patch_off() -> Iterator[None]:
    was = gpu_patch.PATCH.installed()
    gpu_patch.PATCH.uninstall()
    yield
    gpu_patch.PATCH.uninstall()
    if was:
        gpu_patch.PATCH.install()


@cuda
def test_batched_decode_through_the_patch_is_mlx_lms(gpu_patch_off: None) -> None:
    model = _bf16_qwen3()
    prompts = [[5, 9, 200, 17, 3, 88, 41, 7], [11, 12], [300, 2, 9, 9, 41]]
    want = _decode_logits(model, prompts, 24)
    assert gpu_patch.PATCH.install()
    assert qwen3.scaled_dot_product_attention is gpu_patch.attention
    got = _decode_logits(model, prompts, 24)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        spread = mx.abs(w).max().item()
        assert mx.abs(g - w).max().item() <= 0.03 * spread, f"decode step {step}"


def test_single_sequence_decode_and_long_prefills_go_to_mlx_lm() -> None:
    k = mx.random.normal((1, 2, 5, 64))
    v = mx.random.normal((1, 2, 5, 64))
    q = mx.random.normal((1, 4, 1, 64))
    want = base.scaled_dot_product_attention(q, k, v, cache=KVCache(), scale=0.125, mask=None)
    got = gpu_patch.attention(q, k, v, cache=KVCache(), scale=0.125, mask=None)
    assert mx.array_equal(got, want).item()
    long_q = mx.zeros((1, 32, 4096, 64))
    assert not prefill.applies(long_q, mx.zeros((1, 8, 4096, 64)))  # cuDNN's to do
    assert prefill.applies(long_q[:, :, :20], mx.zeros((1, 8, 4096, 64)))
    bf16 = mx.bfloat16
    assert kernel.supports(q.astype(bf16), k.astype(bf16))
    assert not kernel.supports(mx.zeros((1, 4, 5, 64), bf16), k.astype(bf16))  # prefill
    assert not kernel.supports(q, k)  # float32
    assert not kernel.supports(mx.zeros((1, 4, 1, 80), bf16), mx.zeros((1, 2, 5, 80), bf16))
    assert not kernel.supports(mx.zeros((1, 3, 1, 64), bf16), k.astype(bf16))  # 3 over 2 heads


def _left_padded_mask(pads: list[int], length: int, keys: int) -> mx.array:
    """mlx-lm's BatchKVCache mask: causal, and no key before a row's padding ends."""
    rows = mx.arange(keys - length, keys)[:, None] >= mx.arange(keys)[None]
    return rows[None, None] & (mx.array(pads)[:, None, None, None] <= mx.arange(keys))


@pytest.mark.parametrize("mask", ["causal", "padded", "additive", "square"])
def test_short_prefill_matches_mlx_attention(mask: str) -> None:
    """Runs on any device: the ops are MLX's own."""
    b, h, hkv, length, s = 3, 8, 2, 6, 20
    mx.random.seed(5)
    q = mx.random.normal((b, h, length, 64))
    k = mx.random.normal((b, hkv, s, 64))
    v = mx.random.normal((b, hkv, s, 64))
    pads = [0, 4, 15]
    m: Any = mask
    if mask == "padded":
        m = _left_padded_mask(pads, length, s)
    elif mask == "additive":
        m = mx.random.normal((b, 1, length, s))
    elif mask == "square":
        m = mx.arange(length)[:, None] >= mx.arange(s)[None] - (s - length)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=m)
    got = gpu_patch.attention(q, k, v, cache=KVCache(), scale=0.125, mask=m)
    if mask == "padded":  # rows wholly inside a row's padding are never read: skip them
        for row, pad in enumerate(pads):
            first = max(0, pad - (s - length))
            assert mx.allclose(got[row, :, first:], want[row, :, first:], atol=1e-4).item()
        assert mx.isfinite(got).all().item()
    else:
        assert mx.allclose(got, want, atol=1e-4).item()


def test_two_wings_never_hold_one_name() -> None:
    was = cpu_patch.installed(), gpu_patch.PATCH.installed()
    cpu_patch.uninstall()
    gpu_patch.PATCH.uninstall()
    try:
        assert cpu_patch.install()
        with pytest.raises(RuntimeError, match="already patched"):
            gpu_patch.PATCH.install()
        assert qwen3.scaled_dot_product_attention is not gpu_patch.attention
        cpu_patch.uninstall()
        assert gpu_patch.PATCH.install()
        assert qwen3.scaled_dot_product_attention is gpu_patch.attention
    finally:
        gpu_patch.PATCH.uninstall()
        cpu_patch.uninstall()
        if was[0]:
            cpu_patch.install()
        if was[1]:
            gpu_patch.PATCH.install()
