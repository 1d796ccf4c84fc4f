"""Load a GGUF chat model (Llama architecture) into mlx-lm's llama `Model`.

`mx.load` reads GGUF natively: Q4_0/Q4_1/Q8_0 tensors arrive as MLX affine-quantized
(weight, scales, biases) triplets with group size 32, F16/F32 as plain arrays, and other
quantization types dequantized to float16. What is left is renaming tensors to mlx-lm's
(= Hugging Face's) names, undoing llama.cpp's q/k row permutation, building `ModelArgs`
from the metadata, and choosing a compute dtype (see `resolve_dtype`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama

from app.models.device import on_cpu
from app.models.gguf.tokenizer import GGUFTokenizer
from app.models.types import LoadedChatModel

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama",)
# Q4_0/Q4_1/Q8_0 quantize each row in blocks of 32 values: MLX's group size for them.
GGUF_GROUP_SIZE = 32
DEFAULT_ROPE_THETA = 10_000.0
DEFAULT_RMS_EPS = 1e-5
DEFAULT_CONTEXT_LENGTH = 4096
# Bytes hashed from each end of the file: header + metadata, and the last tensors' data.
FINGERPRINT_CHUNK = 1 << 20
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
AUTO_DTYPE = "auto"  # same as None: the device's policy
QUANT_PARTS = ("scales", "biases")
ROPE_FREQS = "rope_freqs.weight"
# GGUF tensor stems -> mlx-lm / Hugging Face llama module paths.
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def resolve_dtype(requested: str | None, file_dtype: mx.Dtype,
                  cpu_quantized: bool = False) -> tuple[str, bool]:
    """(compute dtype name, keep quantized tensors quantized).

    On the CPU, float32: MLX's half-precision matmuls run 10-30x slower there than float32
    through OpenBLAS, and so do its quantized ones, so quantized tensors stay quantized only
    when the caller has CPU kernels for them (`cpu_quantized`) and are dequantized otherwise.
    On a GPU, quantized stays quantized (less memory traffic per token) and the rest runs in
    the file's half type. An explicit `requested` dtype (other than "auto") dequantizes
    everything to it.
    """
    if requested is not None and requested != AUTO_DTYPE:
        if requested not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {requested!r}")
        return requested, False
    if on_cpu():
        return "float32", cpu_quantized
    return ("bfloat16" if file_dtype == mx.bfloat16 else "float16"), True


def read_gguf(path: str | Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """(tensors, metadata) of a GGUF file; metadata numbers come back as mx arrays."""
    # format named: the file may lack the .gguf suffix (Ollama's blobs)
    loaded = mx.load(str(path), format="gguf", return_metadata=True)
    assert isinstance(loaded, tuple)  # return_metadata=True always gives (tensors, metadata)
    tensors, metadata = loaded
    return dict(tensors), dict(metadata)


def meta(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    """A metadata value as plain Python (`default` when absent)."""
    value = metadata.get(key)
    if value is None:
        return default
    return value.tolist() if hasattr(value, "tolist") else value


def hf_tensor_name(gguf_name: str) -> str:
    """'blk.3.attn_q.scales' -> 'model.layers.3.self_attn.q_proj.scales'."""
    stem, _, part = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, index, kind = stem.split(".", 2)
        if kind in LAYER_TENSORS:
            return f"model.layers.{index}.{LAYER_TENSORS[kind]}.{part}"
    elif stem in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[stem]}.{part}"
    raise ValueError(f"unsupported GGUF tensor {gguf_name!r} for the llama architecture")


def unpermute_qk(rows: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation (per head: interleaved -> half-split rotary pairs).

    llama.cpp's converter reorders each head's rows from HF's [first half; second half]
    rotary layout to interleaved pairs so its "normal" RoPE can rotate adjacent values.
    Undoing it restores the original HF weights and standard (non-traditional) RoPE.
    Works on any row-indexed tensor: weights, quantized weights, scales, biases, bias.
    """
    head_rows = rows.shape[0] // n_heads
    return (
        rows.reshape(n_heads, head_rows // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
    )


def llama_config(metadata: dict[str, Any], tensors: dict[str, mx.array]) -> dict[str, Any]:
    """A Hugging Face-style `config.json` dict for the model (also mlx-lm's ModelArgs input)."""
    arch = meta(metadata, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported (supported: {SUPPORTED_ARCHITECTURES})"
        )
    if meta(metadata, f"{arch}.expert_count", 0):
        raise ValueError("mixture-of-experts llama GGUFs are not supported")

    def key(name: str, default: Any = None) -> Any:
        value = meta(metadata, f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{name}")
        if isinstance(value, list):
            raise ValueError(f"per-layer {arch}.{name} is not supported")
        return value

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    vocab_size = meta(metadata, f"{arch}.vocab_size") or tensors["token_embd.weight"].shape[0]
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", DEFAULT_RMS_EPS)),
        "rope_theta": float(key("rope.freq_base", DEFAULT_ROPE_THETA)),
        "max_position_embeddings": int(key("context_length", DEFAULT_CONTEXT_LENGTH)),
        "vocab_size": int(vocab_size),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        "rope_scaling": None,
        "bos_token_id": meta(metadata, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta(metadata, "tokenizer.ggml.eos_token_id"),
    }
    scaling = meta(metadata, f"{arch}.rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {
            "rope_type": "linear",
            "factor": float(key("rope.scaling.factor")),
        }
    elif scaling not in (None, "none"):
        raise ValueError(f"RoPE scaling {scaling!r} is not supported")
    return config


def to_hf_weights(tensors: dict[str, mx.array], config: dict[str, Any]) -> dict[str, mx.array]:
    """GGUF tensors renamed to mlx-lm llama names, q/k un-permuted; quantized stay quantized.

    `rope_freqs.weight` (Llama 3.1 RoPE factors) is not a module weight: see `FactorRoPE`.
    """
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out: dict[str, mx.array] = {}
    for name, value in tensors.items():
        if name == ROPE_FREQS:
            continue
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        out[hf_tensor_name(name)] = unpermute_qk(value, heads[kind]) if kind in heads else value
    return out


def quantized_layers(weights: dict[str, mx.array]) -> dict[str, dict[str, int]]:
    """{module path: {group_size, bits}} for every quantized triplet in `weights`."""
    layers: dict[str, dict[str, int]] = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        path = name[: -len(".scales")]
        in_features = scales.shape[-1] * GGUF_GROUP_SIZE
        bits = weights[f"{path}.weight"].shape[-1] * 32 // in_features
        layers[path] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
    return layers


def dequantize_weights(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """Every tensor as a plain `dtype` array (quantized triplets dequantized)."""
    quantized = quantized_layers(weights)
    out: dict[str, mx.array] = {}
    for name, value in weights.items():
        path, _, part = name.rpartition(".")
        if path in quantized:
            if part in QUANT_PARTS:
                continue
            # Scales in float32 first, so float32 weights are exact (not rounded to f16).
            value = mx.dequantize(
                value,
                weights[f"{path}.scales"].astype(mx.float32),
                weights[f"{path}.biases"].astype(mx.float32),
                group_size=quantized[path]["group_size"],
                bits=quantized[path]["bits"],
            )
        out[name] = value.astype(dtype)
    return out


def cast_floats(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """Float tensors (incl. quantization scales/biases) cast to `dtype`; packed ints kept."""
    return {
        k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()
    }


class FactorRoPE(nn.Module):
    """RoPE with per-frequency scaling factors (a GGUF's `rope_freqs.weight`, Llama 3.1+).

    llama.cpp stores Llama 3's frequency-dependent scaling as precomputed factors instead of
    the `rope_scaling` parameters, so they are applied directly: freq_i = base^(2i/d) * f_i.
    """

    def __init__(self, dims: int, base: float, factors: mx.array):
        super().__init__()
        self.dims = dims
        exponents = mx.arange(0, dims, 2, dtype=mx.float32) / dims
        self._freqs = (base**exponents) * factors.astype(mx.float32)

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        return mx.fast.rope(
            x, self.dims, traditional=False, base=None, scale=1.0, offset=offset,
            freqs=self._freqs,
        )  # fmt: skip


def build_model(
    config: dict[str, Any],
    weights: dict[str, mx.array],
    rope_factors: mx.array | None = None,
) -> nn.Module:
    """mlx-lm's llama Model with `weights` loaded (quantized triplets -> QuantizedLinear)."""
    model = llama.Model(llama.ModelArgs.from_dict(config))
    quantized = quantized_layers(weights)
    if quantized:
        nn.quantize(model, class_predicate=lambda path, _: quantized.get(path, False))
    if rope_factors is not None:
        for layer in model.layers:
            attn = layer.self_attn
            attn.rope = FactorRoPE(attn.head_dim, config["rope_theta"], rope_factors)
    model.eval()
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


def count_parameters(weights: dict[str, mx.array]) -> int:
    """Logical parameter count (a packed uint32 holds 32/bits values; scales not counted)."""
    quantized = quantized_layers(weights)
    total = 0
    for name, value in weights.items():
        path, _, part = name.rpartition(".")
        if path in quantized:
            if part == "weight":
                total += value.size * 32 // quantized[path]["bits"]
        else:
            total += value.size
    return total


def fingerprint(path: Path, tensors: dict[str, mx.array], dtype: str, template: str) -> str:
    """Stable id of (weights, dtype, chat template): not the path, not the mtime.

    Hashing a whole multi-GB file would cost seconds per load, so this takes the size, both
    ends of the file (header + metadata, last tensors) and every tensor's name/shape/type.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(f"gguf:{size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_CHUNK))
        f.seek(max(0, size - FINGERPRINT_CHUNK))
        digest.update(f.read(FINGERPRINT_CHUNK))
    for name in sorted(tensors):
        digest.update(f"{name}{tensors[name].shape}{tensors[name].dtype}".encode())
    digest.update(f"dtype:{dtype}\0template:{template}".encode())
    return digest.hexdigest()


def load_gguf(
    path: str | Path, *, dtype: str | None = None, context_length: int | None = None,
    cpu_quantized: bool = False,
) -> LoadedChatModel:
    """Load a Llama-architecture GGUF as a chat model (see `resolve_dtype` for the dtype;
    `cpu_quantized`: the caller decodes quantized weights on the CPU)."""
    start = time.perf_counter()
    path = Path(path)
    tensors, metadata = read_gguf(path)
    config = llama_config(metadata, tensors)
    tokenizer = GGUFTokenizer.from_metadata(metadata)
    weights = to_hf_weights(tensors, config)
    rope_factors = tensors.get(ROPE_FREQS)

    embed = weights["model.embed_tokens.weight"]
    file_dtype = weights.get("model.embed_tokens.scales", embed).dtype
    dtype_name, keep_quantized = resolve_dtype(dtype, file_dtype, cpu_quantized)
    n_params = count_parameters(weights)
    quantized = bool(quantized_layers(weights))
    digest = fingerprint(path, tensors, dtype_name, tokenizer.chat_template or "")
    del tensors  # the raw arrays live on in `weights` until the model holds its own
    if keep_quantized:
        weights = cast_floats(weights, DTYPES[dtype_name])
    else:
        weights = dequantize_weights(weights, DTYPES[dtype_name])
    model = build_model(config, weights, rope_factors)
    del weights

    ctx = context_length or config["max_position_embeddings"]
    seconds = time.perf_counter() - start
    info = {
        "format": "gguf",
        "path": str(path),
        "name": meta(metadata, "general.name"),
        "architecture": "llama",
        "parameters": n_params,
        "quantized_file": quantized,
        "quantized_weights": keep_quantized and quantized,
        "trained_context_length": config["max_position_embeddings"],
        "load_seconds": round(seconds, 3),
        "device": str(mx.default_device()),
        "config": config,
    }
    logger.info(
        "loaded %s: %.1fM params, %s%s, context %d, %.2f s",
        path.name, n_params / 1e6, dtype_name, " (quantized)" if info["quantized_weights"] else "",
        ctx, seconds,
    )  # fmt: skip
    return LoadedChatModel(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype_name,
        context_length=ctx,
        fingerprint=digest,
        info=info,
    )
