"""Shapes shared by the loaders and the engine.

Everything here is plain Python; loaders fill it in on the engine thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class TextTokenizer(Protocol):
    """What the serving and engine layers need from a tokenizer, whatever its origin."""

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation (eos, eot, im_end, ...)."""

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in `text` map to their ids."""

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens skipped."""

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template's source, None where the model ships none (ChatML)."""

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None, **variables: Any,
    ) -> str:
        """The prompt text for `messages` ([{role, content, ...}]), ready for encode();
        `tools` (OpenAI function specs) and `variables` reach the template."""

    def tokenizer_json(self) -> str | None:
        """The Hugging Face `tokenizers` JSON of this tokenizer (grammar engines build
        their token tables from it), or None where there is no fast tokenizer."""


class DecodeStep(Protocol):
    """One decode step for every row of a batch, outside the model's own forward."""

    def supports(self, caches: list[Any]) -> bool:
        """Whether this batch's caches (one per layer) are ones `step` can extend."""

    def step(self, tokens: np.ndarray, caches: list[Any]) -> np.ndarray:
        """Logits [B, V] for one new token per row (tokens [B]); extends every cache."""

    def release(self, caches: list[Any]) -> None:
        """Forget these caches: the model's own forward takes them over."""

    def prefills(self, cache: list[Any], rows: int) -> bool:
        """Whether `prefill` takes a chunk of `rows` prompt tokens into this
        per-sequence cache (one per layer)."""

    def prefill(self, tokens: np.ndarray, cache: list[Any], sample: bool) -> np.ndarray | None:
        """Extend one sequence's cache by tokens [n]; logits [1, V] of the last one when
        `sample`."""


@dataclass(slots=True)
class LoadedChatModel:
    """A chat model ready for the engine: mlx-lm style module plus tokenizer."""

    model: Any
    """nn.Module: model(tokens[B, L], cache=[per-layer cache]) -> logits[B, L, V]; has .layers."""
    tokenizer: TextTokenizer
    dtype: str
    """Compute dtype of the weights, e.g. 'float32'."""
    context_length: int
    fingerprint: str
    """Stable hash of weights source + dtype + chat template (KV caches are keyed by it)."""
    info: dict[str, Any] = field(default_factory=dict)
    decode_step: DecodeStep | None = None
    """A faster decode step than the model's own forward, chosen at load (app/accel), or
    None: the model's forward throughout."""
    acceleration: str = "mlx"
    """What the model computes with beyond MLX's own ops (for logs), set at load."""
