"""Constrained decoding: which tokens may come next so the output matches a grammar.

Built on llguidance (the grammar engine behind llama.cpp's and vLLM's structured output;
the measurements behind the choice are in bench/results/grammar-libs.md). A model's
`TokenGrammar` is built once from its tokenizer; each request compiles its JSON schema
into a `Constraint`, which the engine's sampler asks for the next-token mask before every
step and tells every sampled token. No MLX here: masks are numpy.

A JSON constraint also keeps the document closable within its token budget: it follows the
text with `JsonCursor`, lets no token through that could open more than the budget can
close, and when the budget runs short allows only the next token of the shortest closing
text (where the schema accepts it), so even a random-weight model ends with a document
that parses instead of being cut off by `max_tokens`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from typing import Any

import llguidance
import numpy as np

from app.text.json_closer import MAX_GROWTH_PER_BYTE, JsonCursor

logger = logging.getLogger(__name__)

# Compact separators with a space after ',' and ':' (json.dumps's own): what models tend
# to write anyway, and no free-form whitespace, so a weak model cannot pad forever.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ",
                                "key_separator": ": "}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
BITS = 32  # llguidance's masks are int32 words, bit i of word w = token 32*w + i
# The close is planned (on a copy of the matcher) once the budget is this near the end.
CLOSING_WINDOW = 32
MAX_CLOSE_TOKENS = 96
CLOSE_MARGIN = 2  # tokens kept in reserve: a close can grow while it is being written
STRUCTURAL_BYTES = frozenset(b'{}[]",:\\')
LITERAL_GROWTH = 4  # 't' outside a string still needs 'rue'
# Tried in order where the JSON syntax's own closing text does not fit the schema.
CLOSE_FILLERS = ('"', "0", "}", "]", "false", ",")


class GrammarError(ValueError):
    """The grammar cannot be compiled; the message says why (for the client's 400)."""


class TokenGrammar:
    """A model's tokenizer as llguidance sees it, with the tokens that end a generation."""

    def __init__(self, tokenizer_json: str, eos_ids: Iterable[int]) -> None:
        self.eos_ids = sorted(set(eos_ids))
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, eos_token=self.eos_ids)
        self.vocab_size = int(self.tokenizer.vocab_size)
        self.mask_words = -(-self.vocab_size // BITS)
        """int32 words of one token mask."""
        # How much one token can lengthen a document's closing text, at most (JsonCursor):
        # each structural byte a few characters, anything else only a literal's letters.
        structure = np.array([sum(map(STRUCTURAL_BYTES.__contains__,
                                      self.tokenizer.decode_bytes([t])))
                              for t in range(self.vocab_size)], dtype=np.int64)
        self.token_growth = MAX_GROWTH_PER_BYTE * structure + LITERAL_GROWTH
        self.token_growth[[t for t in self.eos_ids if t < self.vocab_size]] = 0
        self.by_growth = np.argsort(-self.token_growth, kind="stable")
        self.growth_desc = self.token_growth[self.by_growth]
        self.max_growth = int(self.growth_desc[0])

    def json(self, schema: dict[str, Any] | None, budget: int | None = None) -> Constraint:
        """Output that is one JSON document valid under `schema` (None: any JSON object),
        complete within `budget` tokens, the end token included (None: no budget)."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema if schema is not None else ANY_OBJECT),
                overrides=JSON_OPTIONS)  # type: ignore[arg-type]
        except ValueError as exc:
            raise GrammarError(str(exc)) from exc
        return self._constraint(grammar, budget)

    def lark(self, grammar: str) -> Constraint:
        """Output in a Lark grammar (llguidance's dialect, `%json {...}` inside)."""
        return self._constraint(llguidance.LLMatcher.grammar_from_lark(grammar), None)

    def _constraint(self, grammar: str, budget: int | None) -> Constraint:
        # The constructor never raises: a grammar it cannot build leaves it in error.
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return Constraint(matcher, self, budget)


class Constraint:
    """One generation's position in its grammar (engine thread only once submitted)."""

    def __init__(self, matcher: llguidance.LLMatcher, grammar: TokenGrammar,
                 budget: int | None = None) -> None:
        self._matcher = matcher
        self._grammar = grammar
        self._budget = budget
        self._consumed = 0
        # Only a pure JSON grammar under a budget needs to know where its document stands.
        self._cursor = None if budget is None else \
            JsonCursor(JSON_OPTIONS["item_separator"], JSON_OPTIONS["key_separator"])

    def copy(self) -> Constraint:
        """An independent constraint in the same state (one per choice of `n`); call it
        before any token is consumed."""
        return Constraint(self._matcher.deep_copy(), self._grammar, self._budget)

    def fill(self, words: np.ndarray) -> None:
        """Write the next token's mask into `words` (int32 bit words, zeros beyond the
        tokenizer's vocabulary: padding rows of the embedding are never allowed). After
        an error only the end tokens are allowed, so the generation stops."""
        n = self._grammar.mask_words
        if self._matcher.is_error():
            allowed = np.zeros(n * BITS, dtype=bool)
            allowed[self._grammar.eos_ids] = True
            words[:n] = np.packbits(allowed, bitorder="little").view(np.int32)
            return
        row = words[:n]
        assert row.flags.c_contiguous
        self._matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
        if self._budget is None or self._cursor is None:  # both or neither: not budgeted
            return
        slack = self._budget - self._consumed - 2 - len(self._cursor.closing())
        if slack >= CLOSING_WINDOW:
            # far from the end: only tokens that could open more than is left are dropped
            if slack - CLOSE_MARGIN < self._grammar.max_growth:
                self._drop_growing(row, slack - CLOSE_MARGIN)
            return
        allowed = np.unpackbits(row.view(np.uint8), bitorder="little").astype(bool)
        self._keep_closable(allowed[: self._grammar.vocab_size])
        row[:] = np.packbits(allowed, bitorder="little").view(np.int32)[:n]

    def _drop_growing(self, row: np.ndarray, limit: int) -> None:
        """Clear the bits of tokens whose growth could exceed `limit`."""
        count = int(np.searchsorted(-self._grammar.growth_desc, -limit, side="left"))
        ids = self._grammar.by_growth[:count]
        bits = np.left_shift(np.uint32(1), (ids % BITS).astype(np.uint32))
        np.bitwise_and.at(row.view(np.uint32), ids // BITS, ~bits)

    def _keep_closable(self, allowed: np.ndarray) -> None:
        """Near the end of the budget, keep the document closable: drop tokens that could
        open more than the budget has left, and when it runs out, allow only the next
        token of the shortest close the grammar accepts."""
        assert self._budget is not None and self._cursor is not None
        remaining = self._budget - self._consumed  # this token included
        plan = self._closing_plan()
        if not plan:
            return  # already complete (only the end token left), or no close found
        slack = remaining - 1 - len(plan) - 1  # after this token, the close and the end
        safe = allowed & (self._grammar.token_growth <= slack - CLOSE_MARGIN)
        if allowed[plan[0]]:
            safe[plan[0]] = True
        if slack <= CLOSE_MARGIN and allowed[plan[0]]:
            safe[:] = False
            safe[plan[0]] = True
        if safe.any():
            allowed[:] = safe

    def _closing_plan(self) -> list[int] | None:
        """The tokens of a short close from here that the grammar (schema) accepts: what
        it forces, else the JSON syntax's closing text or a filler character."""
        assert self._cursor is not None
        matcher = self._matcher.deep_copy()
        cursor = dataclasses.replace(self._cursor, stack=list(self._cursor.stack))
        tokenize = self._grammar.tokenizer.tokenize_bytes
        plan: list[int] = []
        while len(plan) < MAX_CLOSE_TOKENS:
            if matcher.is_stopped() or matcher.is_accepting():
                return plan
            closing = cursor.closing()
            candidates = matcher.compute_ff_tokens()[:1] or \
                [t for text in (closing, closing[:1], *CLOSE_FILLERS) if text
                 for t in tokenize(text.encode())[:1]]
            token = next((t for t in candidates if matcher.validate_tokens([t]) == 1), None)
            if token is None:
                return None
            matcher.consume_token(token)
            cursor.feed(self._grammar.tokenizer.decode_bytes([token]).decode(
                "utf-8", errors="replace"))
            plan.append(token)
        return None

    def consume(self, token: int) -> bool:
        """Advance past a sampled token; False when the grammar rejects it."""
        ok = bool(self._matcher.consume_token(token))
        if not ok:
            logger.warning("constraint rejected token %d: %s", token, self._matcher.get_error())
            return False
        self._consumed += 1
        if self._cursor is not None:
            self._cursor.feed(self._grammar.tokenizer.decode_bytes([token]).decode(
                "utf-8", errors="replace"))
        return True
