"""Random-weight chat models at real geometries, as an HF folder and as the same weights in a GGUF.

    python bench/random_model.py tokenizer            # here: SmolLM2's tokenizer, both forms
    python bench/random_model.py hf --geometry 8b     # anywhere: config + safetensors + tokenizer
    python bench/random_model.py gguf --geometry 8b --gguf-py DIR   # the HF folder as a GGUF

The GPU benchmark (bench_gpu.py) needs models far larger than the offline packages hold and
needs the very same weights in both worlds: an HF folder for MLX (mlxd, mlx_lm.server, the
bare loop) and a GGUF for llama.cpp. Weights are random (so nothing is downloaded), in the
Qwen3 architecture at its published shapes, with SmolLM2's 49k-token vocabulary (the
offline package's tokenizer). The output rows of SmolLM2's special tokens are zero, so
greedy decoding never picks an end-of-turn token and every stream runs to its max_tokens on
every server: random logits would otherwise end some streams early, at random.

`tokenizer` runs where the offline SmolLM2 package is installed and writes both tokenizer
forms into bench/out/random-tokenizer/ (HF files, and the GGUF tokenizer fields as JSON),
small enough to carry to the GPU machine. `gguf` needs llama.cpp's gguf-py (it ships in
the llama.cpp source: --gguf-py SRC/gguf-py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
TOKENIZER_DIR = OUT_DIR / "random-tokenizer"
GGUF_FIELDS = "gguf-tokenizer.json"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB = 49152
# SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|> (the GGUF's bos/eos/eot ids).
SILENT_IDS = (0, 1, 2)
INIT_STD = 0.02
SHARD_BYTES = 4 << 30

# Qwen3's published shapes (head_dim 128, grouped KV, q/k norms); `tiny` costs no compute
# (what is left is the server's own work per token).
GEOMETRIES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 tie_word_embeddings=True),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128,
               tie_word_embeddings=False),
}


def model_dir(geometry: str) -> Path:
    return OUT_DIR / f"random-qwen3-{geometry}"


def gguf_file(geometry: str) -> Path:
    return OUT_DIR / f"random-qwen3-{geometry}.bf16.gguf"


def hf_config(geometry: str) -> dict[str, Any]:
    shape = GEOMETRIES[geometry]
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": VOCAB,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        **shape,
    }


# -- tokenizer (where the offline package is) ---------------------------------------------

def write_tokenizer(gguf_py: Path) -> Path:
    """SmolLM2's tokenizer as HF files (from bench_chat's converted folder) and as the GGUF's
    tokenizer.* fields (JSON: name -> type, element type, value)."""
    sys.path.insert(0, str(gguf_py))
    import gguf
    from common import ensure_hf_folder, gguf_path

    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    hf = ensure_hf_folder()
    for name in HF_TOKENIZER_FILES:
        shutil.copy(hf / name, TOKENIZER_DIR / name)
    reader = gguf.GGUFReader(gguf_path())
    fields: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        fields[name] = {"type": kind.name, "sub_type": sub.name if sub else None,
                        "value": value}
    (TOKENIZER_DIR / GGUF_FIELDS).write_text(json.dumps(fields), encoding="utf-8")
    return TOKENIZER_DIR


# -- the HF folder (anywhere MLX runs) ----------------------------------------------------

def _layer_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    q, kv, ff = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, \
        cfg["intermediate_size"]
    return {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_norm.weight": (hd,),
        "self_attn.k_norm.weight": (hd,),
        "mlp.gate_proj.weight": (ff, h),
        "mlp.up_proj.weight": (ff, h),
        "mlp.down_proj.weight": (h, ff),
    }


def _tensor(shape: tuple[int, ...], key: int) -> Any:
    import mlx.core as mx

    if len(shape) == 1:  # norm weights: identity scale
        return mx.ones(shape, dtype=mx.bfloat16)
    return (mx.random.normal(shape, key=mx.random.key(key)) * INIT_STD).astype(mx.bfloat16)


def _silenced(table: Any) -> Any:
    """The output rows of the special tokens set to zero (their logits stay 0)."""
    import mlx.core as mx

    rows = mx.arange(table.shape[0])[:, None]
    silent = mx.zeros((table.shape[0], 1), dtype=mx.bool_)
    for i in SILENT_IDS:
        silent = silent | (rows == i)
    return mx.where(silent, mx.zeros_like(table), table)


def write_hf(geometry: str, tokenizer_dir: Path = TOKENIZER_DIR) -> Path:
    """config.json, sharded model-*.safetensors (bf16) and the tokenizer files."""
    import mlx.core as mx

    out = model_dir(geometry)
    if (out / "config.json").exists():
        return out
    cfg = hf_config(geometry)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    h = cfg["hidden_size"]
    embed = _tensor((VOCAB, h), 0)
    tensors: dict[str, Any] = {"model.norm.weight": _tensor((h,), 1)}
    if cfg["tie_word_embeddings"]:
        tensors["model.embed_tokens.weight"] = _silenced(embed)
    else:
        tensors["model.embed_tokens.weight"] = embed
        tensors["lm_head.weight"] = _silenced(_tensor((VOCAB, h), 2))
    shard, size = 0, 0

    def flush() -> None:
        nonlocal shard, size, tensors
        mx.eval(tensors)
        mx.save_safetensors(str(tmp / f"model-{shard:05d}.safetensors"), tensors,
                            metadata={"format": "pt"})
        shard, size, tensors = shard + 1, 0, {}

    for layer in range(cfg["num_hidden_layers"]):
        for name, shape in _layer_shapes(cfg).items():
            t = _tensor(shape, 100 + layer * 100 + len(tensors))
            tensors[f"model.layers.{layer}.{name}"] = t
            size += t.nbytes
        if size >= SHARD_BYTES:
            flush()
    if tensors:
        flush()
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    for name in HF_TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, tmp / name)
    tmp.rename(out)
    return out


# -- the same weights as a GGUF (llama.cpp's names and metadata) ---------------------------

GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GGUF_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
                  "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_TOP_NAMES:
        return GGUF_TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_LAYER_NAMES[rest]}"


def write_gguf(geometry: str, gguf_py: Path, tokenizer_dir: Path = TOKENIZER_DIR) -> Path:
    """The HF folder's tensors, unchanged bf16 bytes (norms as f32, as llama.cpp's converter
    writes them), under Qwen3's GGUF names; Qwen3 needs no q/k permutation (NeoX RoPE)."""
    import mlx.core as mx
    import numpy as np

    sys.path.insert(0, str(gguf_py))
    import gguf

    path = gguf_file(geometry)
    if path.exists():
        return path
    src = write_hf(geometry, tokenizer_dir)
    cfg = json.loads((src / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path) + ".partial", "qwen3")
    writer.add_name(f"random-qwen3-{geometry}")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(cfg["head_dim"])
    writer.add_value_length(cfg["head_dim"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    fields = json.loads((tokenizer_dir / GGUF_FIELDS).read_text())
    for name, f in fields.items():
        sub = gguf.GGUFValueType[f["sub_type"]] if f["sub_type"] else None
        writer.add_key_value(name, f["value"], gguf.GGUFValueType[f["type"]], sub_type=sub)
    for file in sorted(src.glob("*.safetensors")):
        weights = mx.load(str(file))
        assert isinstance(weights, dict)
        for name, t in weights.items():
            if t.ndim == 1:
                writer.add_tensor(gguf_name(name), np.array(t.astype(mx.float32)))
            else:
                raw = np.array(t.view(mx.uint16))
                writer.add_tensor(gguf_name(name), raw, raw_shape=raw.shape,
                                  raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    Path(str(path) + ".partial").rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("tokenizer", "hf", "gguf"))
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="tiny")
    parser.add_argument("--gguf-py", type=Path, help="llama.cpp's gguf-py folder")
    parser.add_argument("--tokenizer-dir", type=Path, default=TOKENIZER_DIR)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.what == "tokenizer":
        if args.gguf_py is None:
            parser.error("tokenizer needs --gguf-py")
        out = write_tokenizer(args.gguf_py)
    elif args.what == "hf":
        out = write_hf(args.geometry, args.tokenizer_dir)
    else:
        if args.gguf_py is None:
            parser.error("gguf needs --gguf-py")
        out = write_gguf(args.geometry, args.gguf_py, args.tokenizer_dir)
    print(f"{out} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    sys.exit(main())
