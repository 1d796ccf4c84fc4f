"""The tokenizer of a BERT-family folder, over Hugging Face `tokenizers` (no MLX: the
serving layer tokenizes off the engine thread; `encode_batch` runs in Rust threads)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class EmbeddingTokenizer:
    def __init__(self, path: Path) -> None:
        self._tok = Tokenizer.from_file(str(path))
        # The folder's own truncation and padding (often 128, fixed) would cut long inputs
        # silently and pad short ones: lengths are checked and batches padded by us.
        self._tok.no_truncation()
        self._tok.no_padding()
        framed = self._tok.encode("", add_special_tokens=True).ids
        self._prefix, self._suffix = framed[:1], framed[1:]

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, framed with the model's special tokens ([CLS] … [SEP])."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=True)]

    def frame(self, ids: list[int]) -> list[int]:
        """Client-supplied ids (the text's tokens without special ones), framed so they
        embed exactly as the text they encode."""
        return [*self._prefix, *ids, *self._suffix]
