"""Numpy decode steps (app/accel/cpu/llama_decoder.py) against mlx-lm's forward on one batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

from app.accel.cpu.llama_decoder import GEMM_ROWS, CpuLlamaDecoder
from app.models.hf import load_hf
from tests.tiny_model import build_tiny_llama, random_model

pytestmark = pytest.mark.skipif(mx.default_device() != mx.cpu,
                                reason="numpy decode steps run on the CPU only")


# "-q4"/"-q8": the same model quantized (MLX's affine format, groups of 32 or 64), its
# decode steps through the C kernels; the reference is MLX's own quantized forward
@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3", "llama3", "llama-q4",
                                        "qwen2-q8", "qwen3-q4"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind, _, bits = request.param.partition("-q")
    if kind != "llama":
        m = random_model(kind)
    else:
        # 4 layers, prompts long enough that decoding crosses the cache's 256-slot growth
        m = load_hf(build_tiny_llama(tmp_path_factory.mktemp("tiny"), layers=4)).model
    if bits:
        nn.quantize(m, group_size=64 if bits == "8" else 32, bits=int(bits))
        assert any(isinstance(x, nn.QuantizedEmbedding) for _, x in m.named_modules())
    return m


def _batch(model: Any, prompts: list[list[int]]) -> list[BatchKVCache]:
    """A left-padded batch cache prefilled with `prompts` by MLX."""
    width = max(map(len, prompts))
    caches = [BatchKVCache([width - len(p) for p in prompts]) for _ in model.layers]
    tokens = mx.array([[0] * (width - len(p)) + p for p in prompts])
    mx.eval(model(tokens, cache=caches))
    return caches


def _single(model: Any, prompt: list[int]) -> list[BatchKVCache]:
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([prompt]), cache=cache))
    return [BatchKVCache.merge([c]) for c in cache]


def _prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 300, n)]


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, atol=1e-4 * float(np.abs(want).max()), rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_steps_match_mlx_through_growth_joins_and_leaves(model: Any) -> None:
    dec = CpuLlamaDecoder.build(model)
    assert dec is not None
    prompts = [_prompt(i, n) for i, n in enumerate([250, 241, 7])]
    ours, ref = _batch(model, prompts), _batch(model, prompts)
    tokens = np.array([5, 6, 7])
    for step in range(24):
        want = np.array(model(mx.array(tokens)[:, None], cache=ref)[:, -1])
        assert dec.supports(ours)
        got = dec.step(tokens, ours)
        _assert_close(got, want)
        tokens = want.argmax(-1)
        if step == 8:  # the longest row leaves: filter() then trims the common left
            before = ours[0]._idx
            for c in (*ours, *ref):  # padding, leaving K/V as a strided slice
                c.filter([1, 2])
            assert ours[0]._idx == before - 9  # row 1's 9 padding slots trimmed
            tokens = tokens[[1, 2]]
        if step == 14:  # a new prompt joins, as the runner merges a prefilled row
            joining = _prompt(9, 30)
            for batch, new in ((ours, _single(model, joining)), (ref, _single(model, joining))):
                for c, n in zip(batch, new, strict=True):
                    c.extend(n)
            tokens = np.append(tokens, 11)
    assert ours[0].keys.shape[2] > 256  # grew past the first block
    assert ours[0]._idx == ref[0]._idx
    np.testing.assert_array_equal(np.array(ours[0].offset), np.array(ref[0].offset))
    # what the store keeps for a leaving row is the same K/V
    for c_ours, c_ref in zip(ours, ref, strict=True):
        for i in range(3):
            np.testing.assert_allclose(np.array(c_ours.extract(i).keys),
                                       np.array(c_ref.extract(i).keys), atol=1e-4)


def test_writes_never_reach_arrays_that_share_the_buffer(model: Any) -> None:
    dec = CpuLlamaDecoder.build(model)
    assert dec is not None
    caches = _batch(model, [_prompt(1, 20), _prompt(2, 12)])
    before = [np.array(c.keys) for c in caches]
    alias = [c.keys for c in caches]  # e.g. a slice or an extract made earlier
    dec.step(np.array([3, 4]), caches)
    for a, b in zip(alias, before, strict=True):
        np.testing.assert_array_equal(np.array(a), b)


def test_models_it_cannot_reproduce_keep_the_mlx_path(tmp_path: Path) -> None:
    three_bit = load_hf(build_tiny_llama(tmp_path / "q")).model
    nn.quantize(three_bit, group_size=32, bits=3)
    assert CpuLlamaDecoder.build(three_bit) is None
    traditional = load_hf(build_tiny_llama(tmp_path / "t")).model
    for layer in traditional.model.layers:
        layer.self_attn.rope.traditional = True
    assert CpuLlamaDecoder.build(traditional) is None


def test_no_panel_copy_without_the_memory_for_it(model: Any) -> None:
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    quantized = any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    # quantized weights are read where they lie: no copy, nothing to fit
    assert (CpuLlamaDecoder.build(model, available=2 * weights) is None) != quantized
    assert CpuLlamaDecoder.build(model, available=8 * weights) is not None



def test_numpy_attention_where_the_kernels_are_missing(model: Any) -> None:
    """The C attention (native/decode.c) and numpy's, on the same steps."""
    with_c, plain = CpuLlamaDecoder.build(model), CpuLlamaDecoder.build(model)
    assert with_c is not None and plain is not None and with_c._native is not None
    plain._native, plain._fused = None, None
    prompts = [_prompt(3, 40), _prompt(4, 9)]
    a, b = _batch(model, prompts), _batch(model, prompts)
    tokens = np.array([5, 6])
    for _ in range(4):
        got, want = with_c.step(tokens, a), plain.step(tokens, b)
        _assert_close(got, want)
        tokens = want.argmax(-1)


def test_fused_step_gives_the_layer_loops_logits(model: Any) -> None:
    """native/step.c runs the same kernels in the same order as the per-layer loop: the
    same logits to the bit, through a join and a leave."""
    fused, loop = CpuLlamaDecoder.build(model), CpuLlamaDecoder.build(model)
    assert fused is not None and loop is not None
    quantized = any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    per_head_norms = getattr(model.layers[0].self_attn, "q_norm", None) is not None
    if fused._native is None:
        pytest.skip("no C kernels")
    assert (fused._fused is not None) == (quantized and not per_head_norms)
    if fused._fused is None:
        return
    loop._fused = None
    prompts = [_prompt(5, 33), _prompt(6, 12), _prompt(7, 20)]
    a, b = _batch(model, prompts), _batch(model, prompts)
    tokens = np.array([5, 6, 7])
    for step in range(6):
        got, want = fused.step(tokens, a), loop.step(tokens, b)
        np.testing.assert_array_equal(got, want)
        tokens = want.argmax(-1)
        if step == 2:
            for c in (*a, *b):
                c.filter([0, 2])
            tokens = tokens[[0, 2]]
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.array(ca.keys), np.array(cb.keys))
        np.testing.assert_array_equal(np.array(ca.values), np.array(cb.values))


def test_fused_prefill_gives_mlx_logits(model: Any) -> None:
    """step.c's prefill_layers against MLX's forward on the same prompt chunks: a first
    chunk, one that continues a cache MLX filled, chunks on both sides of the GEMM's row
    threshold and one crossing the cache's 256-slot growth; then decode steps from it."""
    fast = CpuLlamaDecoder.build(model)
    assert fast is not None
    if fast._prefill_rows == 0:
        pytest.skip("no one-call steps for this model, or no AVX-512 prefill attention")
    prompt = _prompt(11, 400)
    for chunks in ([1, 20], [60, 5, 230], [GEMM_ROWS - 1, GEMM_ROWS, 300]):
        ours, mlx_cache = make_prompt_cache(model), make_prompt_cache(model)
        at = 0
        for i, n in enumerate(chunks):
            piece = prompt[at : at + n]
            want = np.array(model(mx.array([piece]), cache=mlx_cache)[0, -1])
            if i == 0 and n == 1:  # a cache MLX began (as the store seeds one)
                ours = [type(c)() for c in mlx_cache]
                for c, m in zip(ours, mlx_cache, strict=True):
                    c.state = (m.keys, m.values, m.offset)
                at += n
                continue
            got = fast.prefill(np.array(piece, dtype=np.int32), ours, sample=True)
            assert got is not None
            _assert_close(got[0], want)
            at += n
        assert ours[0].offset == mlx_cache[0].offset == at
        a = [BatchKVCache.merge([c]) for c in ours]
        b = [BatchKVCache.merge([c]) for c in mlx_cache]
        tokens = np.array([5])
        for _ in range(3):
            got, want = fast.step(tokens, a), fast.step(tokens, b)
            _assert_close(got, want)
            tokens = want.argmax(-1)


@pytest.mark.parametrize("head_dim", [40, 64, 96, 128])
def test_attention_kernel_against_numpy(head_dim: int) -> None:
    """Left padding skipped, grouped heads, head sizes off the vector width."""
    from app.accel.cpu import native
    if native.library() is None:
        pytest.skip("no C compiler here")
    rng = np.random.default_rng(head_dim)
    b, h, hkv, cap, end = 3, 6, 2, 64, 37
    keys, values = (rng.standard_normal((b, hkv, cap, head_dim)).astype(np.float32)
                    for _ in range(2))
    q = rng.standard_normal((b, h, head_dim)).astype(np.float32)
    start = np.array([0, 5, 36], np.int32)
    dec = object.__new__(CpuLlamaDecoder)
    dec._native, dec._threads = native.library(), 2
    dec.kv_heads, dec.scale = hkv, np.float32(head_dim ** -0.5)
    got = dec._attend(q, keys, values, end, start)
    for row in range(b):
        for head in range(h):
            k = keys[row, head // (h // hkv), start[row]:end]
            s = k @ q[row, head] * dec.scale
            p = np.exp(s - s.max())
            want = (p / p.sum()) @ values[row, head // (h // hkv), start[row]:end]
            np.testing.assert_allclose(got[row, head], want, rtol=0, atol=1e-5)
