"""Load a Hugging Face model folder (config.json + *.safetensors + tokenizer) via mlx-lm.

mlx-lm's own loader picks the architecture class and understands mlx-community quantized
checkpoints; this adds the CPU dtype policy (float32, dequantized) and our tokenizer wrapper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import dequantize_model, get_total_parameters, load_model

from app.models.device import on_cpu
from app.models.gguf.loader import AUTO_DTYPE, DTYPES
from app.models.hf_tokenizer import HFTokenizer
from app.models.types import LoadedChatModel

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 4096
# config.json keys that state the trained context, most specific first.
CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions")
# Affine quantization has float scales/biases; other modes (mxfp4, nvfp4) pack them as ints.
AFFINE = "affine"
QUANTIZED_TYPES = (nn.QuantizedLinear, nn.QuantizedEmbedding)


def _is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED_TYPES) for _, m in model.named_modules())


def _file_dtype(model: nn.Module) -> mx.Dtype:
    """The dtype most floating parameters are stored in."""
    sizes: dict[mx.Dtype, int] = {}
    for item in tree_flatten(model.parameters()):
        value = item[1]
        if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating):
            sizes[value.dtype] = sizes.get(value.dtype, 0) + value.size
    return max(sizes, key=lambda d: sizes[d]) if sizes else mx.float32


def dequantize_to(model: nn.Module, dtype: mx.Dtype) -> nn.Module:
    """Replace quantized layers by plain ones and cast every float parameter to `dtype`."""
    for _, module in model.named_modules():
        if isinstance(module, QUANTIZED_TYPES) and module.mode == AFFINE:
            # Dequantize from float32 scales so float32 weights are not rounded to f16 first.
            module.scales = module.scales.astype(mx.float32)
            if module.biases is not None:
                module.biases = module.biases.astype(mx.float32)
    model = dequantize_model(model)
    model.set_dtype(dtype)
    return model


def context_length_of(config: dict[str, Any]) -> int:
    text_config = config.get("text_config", {})
    for key in CONTEXT_KEYS:
        for source in (config, text_config):
            if isinstance(source.get(key), int):
                return int(source[key])
    return DEFAULT_CONTEXT_LENGTH


def fingerprint(path: Path, dtype: str, template: str) -> str:
    """Stable id of (weights, dtype, chat template).

    safetensors files start with a JSON header of tensor names, shapes and byte offsets;
    with the file sizes that identifies a checkpoint without reading gigabytes.
    """
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
            digest.update(f.read(header_len))
    digest.update((path / "config.json").read_bytes())
    digest.update(f"dtype:{dtype}\0template:{template}".encode())
    return digest.hexdigest()


def load_hf(
    path: str | Path, *, dtype: str | None = None, context_length: int | None = None
) -> LoadedChatModel:
    """Load a Hugging Face / mlx-community folder. On the CPU: float32, dequantized.

    On a GPU the checkpoint's own dtype and quantization are kept; an explicit `dtype`
    dequantizes and casts everything to it.
    """
    start = time.perf_counter()
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json (not a Hugging Face model folder)")
    if dtype == AUTO_DTYPE:
        dtype = None
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    # lazy: the dtype conversion below runs before anything is materialized twice.
    model, config = load_model(path, lazy=True)
    tokenizer = HFTokenizer.from_path(str(path), eos_token_ids=config.get("eos_token_id"))
    quantized = _is_quantized(model)

    if dtype is None and on_cpu():
        dtype = "float32"
    if dtype is not None:
        model = dequantize_to(model, DTYPES[dtype])
        dtype_name = dtype
    else:
        dtype_name = str(_file_dtype(model)).removeprefix("mlx.core.")
    mx.eval(model.parameters())

    n_params = int(get_total_parameters(model))
    ctx = context_length or context_length_of(config)
    seconds = time.perf_counter() - start
    info = {
        "format": "hf",
        "path": str(path),
        "architecture": config.get("model_type"),
        "parameters": n_params,
        "quantized_file": quantized,
        "quantized_weights": _is_quantized(model),
        "load_seconds": round(seconds, 3),
        "device": str(mx.default_device()),
        "config": json.loads(json.dumps(config, default=str)),
    }
    logger.info(
        "loaded %s: %.1fM params, %s%s, context %d, %.2f s",
        path.name, n_params / 1e6, dtype_name,
        " (quantized)" if info["quantized_weights"] else "", ctx, seconds,
    )  # fmt: skip
    return LoadedChatModel(
        model=model,
        tokenizer=tokenizer,
        dtype=dtype_name,
        context_length=ctx,
        fingerprint=fingerprint(path, dtype_name, tokenizer.chat_template or ""),
        info=info,
    )
