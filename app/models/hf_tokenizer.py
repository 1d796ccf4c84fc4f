"""The `TextTokenizer` of a Hugging Face folder, over mlx-lm's tokenizer wrapper.

Tokenizing needs no MLX: the serving layer tokenizes outside the engine thread. A
GGUF's tokenizer is rebuilt from its metadata next to the GGUF loader (app/models/gguf/).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
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
    _decode: Callable[[list[int]], str] = field(init=False)
    """decode(ids) without special tokens, chosen once: the engine calls it every token."""

    def __post_init__(self) -> None:
        self._decode = _fast_decode(self.wrapper) or self._transformers_decode
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
        return self._decode(ids)

    def _transformers_decode(self, ids: list[int]) -> str:
        return str(self.wrapper.decode(ids, skip_special_tokens=True))

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


def _fast_decode(wrapper: Any) -> Callable[[list[int]], str] | None:
    """The `tokenizers` backend's own decode, where transformers' decode would only wrap
    it (no subclass override, no space clean-up): the wrapping costs more than the decode."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: its decode is used as is
        return None
    hf: Any = getattr(wrapper, "_tokenizer", None)
    cls = type(hf)
    if not isinstance(hf, TokenizersBackend) or cls.decode is not PreTrainedTokenizerBase.decode \
            or cls._decode is not TokenizersBackend._decode or hf.clean_up_tokenization_spaces:
        return None
    backend: Any = hf._tokenizer  # tokenizers.Tokenizer
    backend_decode = backend.decode

    def decode(ids: list[int]) -> str:
        return str(backend_decode(ids, skip_special_tokens=True))

    return decode
