"""Load a BERT-family sentence encoder from a Hugging Face folder (sentence-transformers
layout or a bare `BertModel`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from app.models.bert.model import BertConfig, BertEncoder
from app.models.bert.pooling import Pooling
from app.models.bert.tokenizer import EmbeddingTokenizer

SUPPORTED_TYPES = ("bert",)
_PREFIXES = ("bert.", "model.")


class EmbeddingLoadError(ValueError):
    """The folder is not a BERT-family encoder this loader can read."""


@dataclass(slots=True)
class LoadedEmbeddingModel:
    model: BertEncoder
    tokenizer: EmbeddingTokenizer
    pooling: Pooling
    normalize: bool
    dimensions: int
    max_tokens: int
    """Longest input, special tokens included (sentence-transformers' max_seq_length)."""
    dtype: str
    fingerprint: str
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(init=False)
    """hidden [B, L, D] of right-padded ids [B, L] with lengths [B]: the MLX model's,
    unless acceleration (app/accel) chose another at load."""
    acceleration: str = "mlx"

    def __post_init__(self) -> None:
        self.forward = self._mlx_forward

    def _mlx_forward(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return np.array(self.model(mx.array(ids), mx.array(lengths)).astype(mx.float32))


def load_bert(path: Path, dtype: str | None = None) -> LoadedEmbeddingModel:
    config = _read_json(path / "config.json")
    if config is None:
        raise EmbeddingLoadError(f"{path}: no config.json")
    if config.get("model_type") not in SUPPORTED_TYPES:
        raise EmbeddingLoadError(f"{path}: model_type {config.get('model_type')!r} is not "
                                 f"supported for embeddings (supported: {SUPPORTED_TYPES})")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise EmbeddingLoadError(f"{path}: only absolute position embeddings are supported")
    cfg = BertConfig(**{k: config[k] for k in BertConfig.__dataclass_fields__ if k in config})
    model = BertEncoder(cfg)
    weights = _weights(path)
    want = mx.float32 if dtype is None else getattr(mx, dtype)
    model.load_weights([(k, v.astype(want)) for k, v in weights.items()], strict=True)
    model.fuse_projections()
    mx.eval(model.parameters())
    tokenizer = EmbeddingTokenizer(path / "tokenizer.json")
    pooling, normalize = _pooling(path)
    st_config = _read_json(path / "sentence_bert_config.json") or {}
    max_tokens = min(int(st_config.get("max_seq_length") or cfg.max_position_embeddings),
                     cfg.max_position_embeddings)
    digest = hashlib.sha256(f"{path.resolve()}|{want}".encode()).hexdigest()
    return LoadedEmbeddingModel(model, tokenizer, pooling, normalize, cfg.hidden_size,
                                max_tokens, str(want).removeprefix("mlx.core."), digest)


def _weights(path: Path) -> dict[str, mx.array]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise EmbeddingLoadError(f"{path}: no .safetensors weights (convert a "
                                 "pytorch_model.bin with safetensors first)")
    out: dict[str, mx.array] = {}
    for f in files:
        loaded = mx.load(str(f))
        assert isinstance(loaded, dict)
        for key, val in loaded.items():
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            # Unused by sentence embeddings: the NSP pooler and HF's position-id buffer.
            if not key.startswith(("pooler.", "cls.")) and key != "embeddings.position_ids":
                out[key] = val
    return out


def _pooling(path: Path) -> tuple[Pooling, bool]:
    """Pooling and normalization from sentence-transformers' modules.json; a bare
    BertModel folder gets mean pooling, normalized (what OpenAI-style clients expect)."""
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list):
        return "mean", True
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling: Pooling = "mean"
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            cfg = _read_json(path / m.get("path", "") / "config.json") or {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not cfg.get("pooling_mode_mean_tokens", True):
                raise EmbeddingLoadError(f"{path}: only mean or CLS pooling is supported")
    return pooling, normalize


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text())
