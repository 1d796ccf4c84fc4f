"""Structured output: a request's `response_format` (or forced tool calls) as a token
constraint per choice.

The model's `TokenGrammar` (its tokenizer as the grammar engine sees it) is built on the
first constrained request and kept; a schema is compiled per request, off the event loop.
A schema the grammar engine cannot enforce is the client's 400, with the engine's reason.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool

from app.engine.models import ChatModelHandle
from app.protocol.chat import ChatCompletionRequest, JsonObjectFormat, JsonSchemaFormat
from app.protocol.errors import APIError
from app.text.grammar import Constraint, GrammarError, TokenGrammar
from app.text.tool_syntax import ToolSyntax

logger = logging.getLogger(__name__)

PARAM = "response_format"


class StructuredOutput:
    def __init__(self) -> None:
        self._grammars: dict[str, TokenGrammar] = {}
        """By model fingerprint."""

    async def constraints(self, body: ChatCompletionRequest, handle: ChatModelHandle,
                          max_tokens: int, tools: ToolSyntax | None,
                          forced_tools: str | None) -> list[Constraint | None]:
        """One constraint per choice (None: free text): the response_format's JSON,
        closed within `max_tokens`, or the forced tool calls' grammar."""
        fmt = body.response_format
        json_format = isinstance(fmt, JsonObjectFormat | JsonSchemaFormat)
        if json_format and tools is not None:
            raise APIError(400, "response_format json_object/json_schema together with tools "
                           "is not supported; drop one, or set tool_choice to 'none'",
                           param=PARAM, code="unsupported_combination")
        if not json_format and forced_tools is None:
            return [None] * body.n
        grammar = await self._grammar(handle)
        try:
            if forced_tools is not None:
                first = await run_in_threadpool(grammar.lark, forced_tools)
            else:
                schema = fmt.json_schema.schema_ if isinstance(fmt, JsonSchemaFormat) else None
                first = await run_in_threadpool(grammar.json, schema, max_tokens)
        except GrammarError as exc:
            param = "tools" if forced_tools is not None else PARAM
            raise APIError(400, f"{param}: this JSON schema cannot be enforced: {exc}",
                           param=param, code="invalid_json_schema") from exc
        return [first, *(first.copy() for _ in range(body.n - 1))]

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
