"""Convert a Llama GGUF into a Hugging Face folder that `mlx_lm.server` can serve.

    python bench/convert_gguf.py IN.gguf OUT_DIR

mlx-lm cannot read GGUF, so side-by-side benchmarks need the very same model as a HF
folder: float32 `model.safetensors` (dequantized, q/k un-permuted, HF tensor names),
`config.json`, `tokenizer.json` (rebuilt from the GGUF vocabulary), `tokenizer_config.json`
with the chat template, and `generation_config.json`. All mapping code is app.models.gguf's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from app.accel.process import prepare_process

prepare_process()  # before mlx: dequantizing is float32 work

import mlx.core as mx  # noqa: E402

from app.models.gguf.loader import (  # noqa: E402
    ROPE_FREQS,
    dequantize_weights,
    llama_config,
    read_gguf,
    to_hf_weights,
)
from app.models.gguf.tokenizer import GGUFTokenizer  # noqa: E402

logger = logging.getLogger(__name__)

OUT_DTYPE = "float32"
WEIGHTS_FILE = "model.safetensors"


def _json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the HF folder for `gguf_path` into `out_dir` (created); returns `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, metadata = read_gguf(gguf_path)
    if ROPE_FREQS in tensors:
        # HF expresses these as rope_scaling parameters the GGUF no longer carries.
        raise ValueError("GGUFs with rope_freqs (Llama 3.1 RoPE factors) cannot be converted")
    config = llama_config(metadata, tensors)
    tokenizer = GGUFTokenizer.from_metadata(metadata)
    spec = tokenizer.spec
    eos_ids = sorted(tokenizer.eos_token_ids)

    weights = dequantize_weights(to_hf_weights(tensors, config), getattr(mx, OUT_DTYPE))
    # "pt" marks the file as a regular HF checkpoint for transformers as well.
    mx.save_safetensors(str(out / WEIGHTS_FILE), weights, metadata={"format": "pt"})

    # Every end-of-turn id, so mlx_lm stops where mlxd stops.
    _json(out / "config.json", {**config, "eos_token_id": eos_ids, "torch_dtype": OUT_DTYPE})
    _json(
        out / "generation_config.json",
        {
            "bos_token_id": spec.bos_token_id,
            "eos_token_id": eos_ids,
            "pad_token_id": spec.padding_token_id,
        },
    )
    (out / "tokenizer.json").write_text(tokenizer.tokenizer_json(), encoding="utf-8")
    _json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": spec.token(spec.bos_token_id),
            "eos_token": spec.token(spec.eos_token_id),
            "unk_token": spec.token(spec.unknown_token_id),
            "pad_token": spec.token(spec.padding_token_id),
            "add_bos_token": spec.add_bos_token,
            "add_eos_token": spec.add_eos_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": config["max_position_embeddings"],
            "chat_template": spec.chat_template,
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="input .gguf file (Llama architecture)")
    parser.add_argument("out_dir", type=Path, help="output folder (created)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    out = convert(args.gguf, args.out_dir)
    size = (out / WEIGHTS_FILE).stat().st_size
    logger.info("wrote %s (%.0f MB) in %.1f s", out, size / 1e6, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
