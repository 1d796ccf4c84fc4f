"""Incremental detokenization: text deltas from a growing list of token ids.

Decoding one token at a time breaks multi-byte characters and the leading-space
rules of SentencePiece/byte-level BPE, so each step decodes a short window and
emits only the part past what was already emitted. The window's start moves in jumps,
so the text already emitted from it is the previous step's decode, kept: one decode
per token instead of two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

REPLACEMENT_CHAR = "\ufffd"
# Tokens kept as left context; enough for any tokenizer's space handling.
CONTEXT_TOKENS = 6
# The window grows to this many tokens before its start jumps (a decode of its own).
MAX_WINDOW_TOKENS = 2 * CONTEXT_TOKENS


@dataclass(slots=True)
class IncrementalDetokenizer:
    decode: Callable[[list[int]], str]
    ids: list[int] = field(default_factory=list)
    _prefix: int = 0  # start of the decode window
    _read: int = 0  # tokens up to here are already emitted
    _done: str = ""  # decode(ids[_prefix:_read])

    def add(self, token: int) -> str:
        """Append a token; return the newly completed text (possibly empty)."""
        self.ids.append(token)
        text = self.decode(self.ids[self._prefix :])
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # an unfinished multi-byte character: wait for more bytes
        done = self._done
        delta = text[len(done) :] if text.startswith(done) else text
        self._read = len(self.ids)
        if self._read - self._prefix > MAX_WINDOW_TOKENS:
            start = self._read - CONTEXT_TOKENS
            done = self.decode(self.ids[start : self._read])
            # A window opening inside a character (byte tokens) decodes its first bytes as
            # U+FFFD, and the next decode might not start with this one: step back.
            while done.startswith(REPLACEMENT_CHAR) and start > self._prefix:
                start -= 1
                done = self.decode(self.ids[start : self._read])
            self._prefix, self._done = start, done
        else:
            self._done = text
        return delta

    def flush(self) -> str:
        """Whatever is still pending at the end (a dangling partial character)."""
        if self._read == len(self.ids):
            return ""
        text = self.decode(self.ids[self._prefix :])
        self._read = len(self.ids)
        return text[len(self._done) :]
