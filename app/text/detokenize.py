"""Incremental detokenization: text deltas from a growing list of token ids.

Decoding one token at a time breaks multi-byte characters and the leading-space
rules of SentencePiece/byte-level BPE, so each step decodes a short window and
emits only the part past what was already emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

REPLACEMENT_CHAR = "\ufffd"
# Tokens kept as left context; enough for any tokenizer's space handling.
CONTEXT_TOKENS = 6


@dataclass(slots=True)
class IncrementalDetokenizer:
    decode: Callable[[list[int]], str]
    ids: list[int] = field(default_factory=list)
    _prefix: int = 0  # start of the decode window
    _read: int = 0  # tokens up to here are already emitted

    def add(self, token: int) -> str:
        """Append a token; return the newly completed text (possibly empty)."""
        self.ids.append(token)
        window = self.ids[self._prefix :]
        text = self.decode(window)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # an unfinished multi-byte character: wait for more bytes
        done = self.decode(self.ids[self._prefix : self._read])
        delta = text[len(done) :] if text.startswith(done) else text
        self._read = len(self.ids)
        self._prefix = max(0, self._read - CONTEXT_TOKENS)
        return delta

    def flush(self) -> str:
        """Whatever is still pending at the end (a dangling partial character)."""
        if self._read == len(self.ids):
            return ""
        text = self.decode(self.ids[self._prefix :])
        done = self.decode(self.ids[self._prefix : self._read])
        self._read = len(self.ids)
        return text[len(done) :]
