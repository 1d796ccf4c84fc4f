"""Whisper weights from Hugging Face folders, in two namings:

- transformers (openai/whisper-*): `model.encoder.layers.N.self_attn.q_proj`, config.json
  with d_model / encoder_layers / num_mel_bins ...
- OpenAI's original / mlx-community (mlx-community/whisper-*): `encoder.blocks.N.attn.query`,
  config.json with the n_mels / n_audio_state ... dims.

Separate q/k/v projections are fused here into our q|k|v and k|v layout (k has no bias).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import mlx.core as mx

logger = logging.getLogger(__name__)

WEIGHT_GLOBS = ("*.safetensors", "weights.npz")

# transformers names -> (our module, role); role picks the fused slot
_HF_ATTN = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out"}
_OPENAI_ATTN = {"query": "q", "key": "k", "value": "v", "out": "out"}


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(
        any(folder.glob(pattern)) for pattern in WEIGHT_GLOBS
    )


def load_hf_weights(folder: str | Path) -> tuple[dict[str, int], dict[str, mx.array], dict]:
    """(dims, weights under our names, config.json) for a transformers or OpenAI-style folder."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    raw = _read_tensors(folder)
    if any(k.startswith(("model.encoder.", "encoder.layers.")) for k in raw):
        weights = _map_transformers(raw)
    elif any(".blocks." in k for k in raw):
        weights = _map_openai(raw)
    else:
        raise ValueError(f"{folder}: tensor names are neither transformers nor OpenAI Whisper")
    if config.get("quantization"):
        raise ValueError(f"{folder}: MLX-quantized Whisper folders are not supported")
    dims = _dims(config, weights)
    if "encoder.positions" not in weights:
        from app.models.whisper.model import sinusoids

        weights["encoder.positions"] = sinusoids(dims["n_audio_ctx"], dims["n_audio_state"])
    return dims, weights, config


def _read_tensors(folder: Path) -> dict[str, mx.array]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("weights.npz"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors or weights.npz")
    tensors: dict[str, mx.array] = {}
    for path in files:
        loaded = mx.load(str(path))
        assert isinstance(loaded, dict)
        tensors.update(loaded)
    return tensors


def _conv(w: mx.array) -> mx.array:
    # PyTorch [out, in, k] -> MLX [out, k, in]; mlx-community files are already MLX layout
    return w.transpose(0, 2, 1) if w.shape[2] == 3 and w.shape[1] != 3 else w


def _map_transformers(raw: dict[str, mx.array]) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    attn: dict[str, dict[str, mx.array]] = {}
    for name, value in raw.items():
        key = name.removeprefix("model.")
        if key.startswith("proj_out"):
            continue  # tied to the token embedding
        m = re.match(r"(encoder|decoder)\.layers\.(\d+)\.(.+)$", key)
        if m is None:
            top = {
                "encoder.conv1.weight": "encoder.conv1.weight",
                "encoder.conv1.bias": "encoder.conv1.bias",
                "encoder.conv2.weight": "encoder.conv2.weight",
                "encoder.conv2.bias": "encoder.conv2.bias",
                "encoder.embed_positions.weight": "encoder.positions",
                "encoder.layer_norm.weight": "encoder.ln_post.weight",
                "encoder.layer_norm.bias": "encoder.ln_post.bias",
                "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
                "decoder.embed_positions.weight": "decoder.positions",
                "decoder.layer_norm.weight": "decoder.ln.weight",
                "decoder.layer_norm.bias": "decoder.ln.bias",
            }.get(key)
            if top is not None:
                out[top] = _conv(value) if "conv" in top and top.endswith("weight") else value
            continue
        side, index, rest = m.groups()
        prefix = f"{side}.blocks.{index}"
        parts = rest.split(".")
        if parts[0] in ("self_attn", "encoder_attn") and parts[1] in _HF_ATTN:
            module = "attn" if parts[0] == "self_attn" else "cross"
            attn.setdefault(f"{prefix}.{module}", {})[f"{_HF_ATTN[parts[1]]}.{parts[2]}"] = value
            continue
        local = {
            "self_attn_layer_norm": "attn_ln",
            "encoder_attn_layer_norm": "cross_ln",
            "final_layer_norm": "mlp_ln",
            "fc1": "mlp.fc1",
            "fc2": "mlp.fc2",
        }.get(parts[0])
        if local is not None:
            out[f"{prefix}.{local}.{parts[1]}"] = value
    for module, parts_ in attn.items():
        out.update(_fuse(module, parts_))
    return out


def _map_openai(raw: dict[str, mx.array]) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    attn: dict[str, dict[str, mx.array]] = {}
    for name, value in raw.items():
        m = re.match(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)$", name)
        if m is None:
            top = {
                "encoder.positional_embedding": "encoder.positions",
                "decoder.positional_embedding": "decoder.positions",
                "encoder.ln_post.weight": "encoder.ln_post.weight",
                "encoder.ln_post.bias": "encoder.ln_post.bias",
                "decoder.ln.weight": "decoder.ln.weight",
                "decoder.ln.bias": "decoder.ln.bias",
                "decoder.token_embedding.weight": "decoder.token_embedding.weight",
            }.get(name)
            if name.startswith("encoder.conv"):
                top = name
            if top is not None:
                out[top] = _conv(value) if "conv" in top and top.endswith("weight") else value
            continue
        side, index, rest = m.groups()
        prefix = f"{side}.blocks.{index}"
        parts = rest.split(".")
        if parts[0] in ("attn", "cross_attn") and parts[1] in _OPENAI_ATTN:
            module = "attn" if parts[0] == "attn" else "cross"
            attn.setdefault(f"{prefix}.{module}", {})[f"{_OPENAI_ATTN[parts[1]]}.{parts[2]}"] = (
                value
            )
            continue
        # mlp.0 / mlp.2 (PyTorch Sequential) or mlp1 / mlp2 (mlx-whisper)
        local = {
            "attn_ln": "attn_ln",
            "cross_attn_ln": "cross_ln",
            "mlp_ln": "mlp_ln",
            "mlp1": "mlp.fc1",
            "mlp2": "mlp.fc2",
        }.get(parts[0])
        if parts[0] == "mlp" and len(parts) == 3:
            local = {"0": "mlp.fc1", "2": "mlp.fc2"}.get(parts[1])
            parts = parts[1:]
        if local is not None:
            out[f"{prefix}.{local}.{parts[-1]}"] = value
    for module, parts_ in attn.items():
        out.update(_fuse(module, parts_))
    return out


def _fuse(module: str, p: dict[str, mx.array]) -> dict[str, mx.array]:
    def bias(role: str) -> mx.array:
        w = p[f"{role}.weight"]
        return p.get(f"{role}.bias", mx.zeros((w.shape[0],), dtype=w.dtype))

    out = {f"{module}.out.weight": p["out.weight"], f"{module}.out.bias": bias("out")}
    roles: tuple[str, ...] = ("q", "k", "v")
    fused = "qkv"
    if not module.endswith(".attn"):
        roles, fused = ("k", "v"), "kv"
        out[f"{module}.q.weight"] = p["q.weight"]
        out[f"{module}.q.bias"] = bias("q")
    out[f"{module}.{fused}.weight"] = mx.concatenate([p[f"{r}.weight"] for r in roles], axis=0)
    out[f"{module}.{fused}.bias"] = mx.concatenate([bias(r) for r in roles], axis=0)
    return out


def _dims(config: dict[str, Any], weights: dict[str, mx.array]) -> dict[str, int]:
    cfg = config.get("dims", config)
    if "n_audio_state" in cfg:
        keys = [
            "n_mels",
            "n_audio_ctx",
            "n_audio_state",
            "n_audio_head",
            "n_audio_layer",
            "n_vocab",
            "n_text_ctx",
            "n_text_state",
            "n_text_head",
            "n_text_layer",
        ]
        return {k: int(cfg[k]) for k in keys}
    d = int(cfg["d_model"])
    return {
        "n_mels": int(cfg.get("num_mel_bins", weights["encoder.conv1.weight"].shape[2])),
        "n_audio_ctx": int(cfg.get("max_source_positions", 1500)),
        "n_audio_state": d,
        "n_audio_head": int(cfg["encoder_attention_heads"]),
        "n_audio_layer": int(cfg["encoder_layers"]),
        "n_vocab": int(weights["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(cfg.get("max_target_positions", 448)),
        "n_text_state": d,
        "n_text_head": int(cfg["decoder_attention_heads"]),
        "n_text_layer": int(cfg["decoder_layers"]),
    }
