"""The `TextTokenizer` of a Hugging Face folder, over mlx-lm's tokenizer wrapper.

Tokenizing needs no MLX: the serving layer tokenizes outside the engine thread. A
GGUF's tokenizer is rebuilt from its metadata next to the GGUF loader (app/models/gguf/).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.text.chat_template import render_chat_template
from app.text.special_tokens import end_of_turn_ids

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class HFTokenizer:
    """`TextTokenizer` over mlx-lm's `TokenizerWrapper` (a transformers tokenizer)."""

    wrapper: Any
    """mlx_lm.tokenizer_utils.TokenizerWrapper; other attributes reach the HF tokenizer."""
    _eos_ids: set[int] = field(init=False)
    _decode: Any = field(init=False)
    """The wrapped tokenizer's decode, looked up once: the engine calls it every token."""

    def __post_init__(self) -> None:
        self._decode = self.wrapper.decode
        special = set(self.wrapper.all_special_ids)
        eos = set(self.wrapper.eos_token_ids)
        self._eos_ids = end_of_turn_ids(eos, self.wrapper.get_vocab(), special)

    @classmethod
    def from_path(
        cls, path: str | Path, eos_token_ids: list[int] | int | None = None
    ) -> HFTokenizer:
        """Load the tokenizer of a HF folder; `eos_token_ids` as in config.json."""
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        return cls(load_tokenizer(Path(path), eos_token_ids=eos_token_ids))

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self._eos_ids)

    @property
    def bos_token_id(self) -> int | None:
        bos = self.wrapper.bos_token_id
        return None if bos is None else int(bos)

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows (the model's embedding may have padding rows beyond)."""
        return len(self.wrapper)

    def tokenizer_json(self) -> str | None:
        backend = getattr(self.wrapper._tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer
            return None
        backend = copy.copy(backend)  # padding/truncation settings must not travel along
        backend.no_padding()
        backend.no_truncation()
        return str(backend.to_str())

    @property
    def chat_template(self) -> str | None:
        template = self.wrapper.chat_template
        return template if isinstance(template, str) else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.wrapper.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        return str(self._decode(ids, skip_special_tokens=True))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None, **variables: Any,
    ) -> str:
        template = self.chat_template
        if template is None and self.wrapper.has_chat_template:
            # A Python renderer from mlx-lm (chat_template_type) or a named template dict.
            return str(
                self.wrapper.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                    tools=tools, **variables,
                )
            )
        return render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.wrapper.bos_token,
            eos_token=self.wrapper.eos_token,
            tools=tools,
            **variables,
        )
