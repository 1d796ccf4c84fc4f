"""Structured output: a request's `response_format` as a token constraint per choice.

The model's `TokenGrammar` (its tokenizer as the grammar engine sees it) is built on the
first constrained request and kept; a schema is compiled per request, off the event loop.
A schema the grammar engine cannot enforce is the client's 400, with the engine's reason.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool

from app.engine.models import ChatModelHandle
from app.protocol.chat import JsonObjectFormat, JsonSchemaFormat, ResponseFormat
from app.protocol.errors import APIError
from app.text.grammar import Constraint, GrammarError, TokenGrammar

logger = logging.getLogger(__name__)

PARAM = "response_format"


class StructuredOutput:
    def __init__(self) -> None:
        self._grammars: dict[str, TokenGrammar] = {}
        """By model fingerprint."""

    async def constraints(self, fmt: ResponseFormat | None, handle: ChatModelHandle,
                          n: int, max_tokens: int) -> list[Constraint | None]:
        """One constraint per choice (None: free text), each closing its document within
        `max_tokens`."""
        if not isinstance(fmt, JsonObjectFormat | JsonSchemaFormat):
            return [None] * n
        grammar = await self._grammar(handle)
        schema = fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else None
        try:
            first = await run_in_threadpool(grammar.json, schema, max_tokens)
        except GrammarError as exc:
            raise APIError(400, f"response_format: this JSON schema cannot be enforced: {exc}",
                           param=PARAM, code="invalid_json_schema") from exc
        return [first, *(first.copy() for _ in range(n - 1))]

    async def _grammar(self, handle: ChatModelHandle) -> TokenGrammar:
        grammar = self._grammars.get(handle.fingerprint)
        if grammar is not None:
            return grammar
        tokenizer_json = handle.tokenizer.tokenizer_json()
        if tokenizer_json is None:
            raise APIError(400, f"model {handle.spec.id!r} has no fast tokenizer, which "
                           "structured output needs", param=PARAM, code="model_not_supported")
        grammar = await run_in_threadpool(TokenGrammar, tokenizer_json,
                                          handle.tokenizer.eos_token_ids)
        logger.info("token grammar for %s built (%d tokens)", handle.spec.id, grammar.vocab_size)
        self._grammars[handle.fingerprint] = grammar
        return grammar
