"""load_whisper(): a CTranslate2 or Hugging Face Whisper folder -> a ready WhisperBundle."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from app.models.device import on_cpu
from app.models.whisper import ct2, hf
from app.models.whisper.model import Whisper, WhisperDims
from app.models.whisper.tokenizer import WhisperTokenizer, load_tokenizer

logger = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"


@dataclass(slots=True)
class WhisperBundle:
    model: Whisper
    tokenizer: WhisperTokenizer
    is_multilingual: bool
    fingerprint: str
    """Stable hash of the weights' source and compute dtype."""
    dtype: str
    """Compute dtype of the weights, e.g. 'float32'."""
    path: str
    format: str
    """'ct2' or 'hf'."""
    alignment_heads: list[tuple[int, int]] = field(default_factory=list)
    """(decoder layer, head) pairs whose cross-attention tracks time (word timestamps)."""
    suppress_tokens: list[int] = field(default_factory=list)
    """Tokens never sampled (non-speech symbols and control tokens)."""
    begin_suppress_tokens: list[int] = field(default_factory=list)
    """Tokens not allowed as the first sampled token (blank, eot)."""

    @property
    def n_mels(self) -> int:
        return self.model.dims.n_mels


def default_dtype() -> mx.Dtype:
    # float16 matmuls run at ~3 GFLOP/s on the CPU against ~70 for float32 with OpenBLAS
    return mx.float32 if on_cpu() else mx.float16


def load_whisper(path: str | Path, dtype: mx.Dtype | None = None,
                 parts: list[Path] | None = None) -> WhisperBundle:
    """Load a Whisper folder: CTranslate2 (model.bin) or Hugging Face (safetensors/npz).

    `parts`: the further pieces of a CTranslate2 model.bin split as model.bin.part1 (in
    this folder), part2, ... (see ct2.read_ct2).
    """
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"Whisper model folder not found: {folder}")
    dtype = dtype or default_dtype()
    extra: dict[str, Any] = {}
    if ct2.is_ct2_folder(folder):
        fmt = "ct2"
        dims_dict, np_weights = ct2.whisper_weights(ct2.read_ct2(folder, parts))
        weights = {k: mx.array(np.asarray(v, dtype=np.float32)) for k, v in np_weights.items()}
        del np_weights
        if (folder / "config.json").exists():
            extra = json.loads((folder / "config.json").read_text())
    elif hf.is_hf_folder(folder):
        fmt = "hf"
        dims_dict, weights, extra = hf.load_hf_weights(folder)
        if (folder / GENERATION_CONFIG).exists():
            extra = {**extra, **json.loads((folder / GENERATION_CONFIG).read_text())}
    else:
        raise ValueError(f"{folder} is neither a CTranslate2 nor a Hugging Face Whisper folder")

    dims = WhisperDims(**dims_dict)
    model = Whisper(dims)
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=True)
    model.eval()
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(folder, dims.n_vocab)
    bundle = WhisperBundle(
        model=model,
        tokenizer=tokenizer,
        is_multilingual=tokenizer.is_multilingual,
        fingerprint=_fingerprint(folder, fmt, dtype),
        dtype=str(dtype).removeprefix("mlx.core."),
        path=str(folder),
        format=fmt,
        alignment_heads=_alignment_heads(extra, dims),
        suppress_tokens=_suppress(extra, tokenizer),
        begin_suppress_tokens=_begin_suppress(extra, tokenizer),
    )
    logger.info(
        "loaded Whisper %s (%s, %s, %d+%d layers, d=%d, vocab %d)",
        folder.name, fmt, bundle.dtype, dims.n_audio_layer, dims.n_text_layer,
        dims.n_text_state, dims.n_vocab,
    )  # fmt: skip
    return bundle


def _fingerprint(folder: Path, fmt: str, dtype: mx.Dtype) -> str:
    # size + mtime of each weight file: cheap, and changes whenever the weights do
    h = hashlib.sha256(f"whisper|{folder.resolve()}|{fmt}|{dtype}".encode())
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in (".bin", ".safetensors", ".npz", ".json")
                            or f.name.startswith(ct2.MODEL_FILE)):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _alignment_heads(config: dict[str, Any], dims: WhisperDims) -> list[tuple[int, int]]:
    heads = config.get("alignment_heads")
    if heads:
        return [(int(layer), int(head)) for layer, head in heads]
    # without a list, the upper half of the decoder's heads is the usual stand-in
    return [
        (layer, head)
        for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
        for head in range(dims.n_text_head)
    ]


def _suppress(config: dict[str, Any], tok: WhisperTokenizer) -> list[int]:
    listed = config.get("suppress_ids", config.get("suppress_tokens"))
    ids = set(listed) if listed else set(tok.non_speech_tokens())
    s = tok.special
    ids |= {s.sot, s.translate, s.transcribe, s.sot_lm, s.sot_prev, s.no_speech}
    return sorted(i for i in ids if 0 <= i < tok.n_vocab)


def _begin_suppress(config: dict[str, Any], tok: WhisperTokenizer) -> list[int]:
    listed = config.get("suppress_ids_begin", config.get("begin_suppress_tokens"))
    ids = set(listed) if listed else {*tok.encode(" "), tok.eot}
    return sorted(ids)
