"""The Responses API (/v1/responses) on the chat machinery.

A request becomes a chat completion: instructions as the system message, then the
stored conversation of `previous_response_id`, then the new input items
(app/serving/response_items.py). Templating, sampling, tools, structured output and
admission are ChatService's. Every turn of a conversation uses one KV session key (the
first response's id, or the client's `prompt_cache_key`), so a continuation finds the
previous turn's prompt and reply resident and prefills only the new input; its
`usage.input_tokens_details.cached_tokens` says how much was reused. Stored responses
(app/serving/response_store.py) survive a restart where session persistence is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.engine.request import Delta, Failed, Finished, Usage
from app.engine.stream import RequestStream
from app.protocol.chat import ChatCompletionRequest
from app.protocol.errors import APIError
from app.protocol.responses import (
    INCLUDES_WITHOUT_EFFECT,
    LOGPROBS_INCLUDE,
    ResponsesRequest,
)
from app.protocol.sse import SSE_HEADERS, sse_comment
from app.serving.chat import ChatService, PreparedChat
from app.serving.chat_output import logprobs_json
from app.serving.generation import MergedStreams, abort_unfinished, collect
from app.serving.reply import Complete, Guard, Reply, Streamed
from app.serving.response_events import EventWriter, OutputEvents
from app.serving.response_items import (
    Message,
    chat_tool_choice,
    chat_tools,
    history_message,
    input_messages,
    new_id,
    output_items,
)
from app.serving.response_store import ResponseStore, StoredResponse
from app.serving.tenancy import SHARED, CacheScope

logger = logging.getLogger(__name__)

SESSION_PREFIX = "resp:"


RESPONSE_ID_HEADER = "x-mlxd-response-id"


@dataclass(slots=True)
class PreparedResponse:
    body: ResponsesRequest
    chat: PreparedChat
    id: str
    created: int
    session: str
    messages: list[Message]
    """The conversation before this reply (stored with the reply appended)."""
    input_items: list[dict[str, Any]]
    tenant: str | None = None


class ResponsesService:
    def __init__(self, chat: ChatService, store: ResponseStore) -> None:
        self.chat = chat
        self.store = store

    async def handle(self, body: ResponsesRequest, guard: Guard,
                     scope: CacheScope = SHARED) -> Reply:
        prep = await self.prepare(body, scope)
        streams = await guard(self.chat.start(prep.chat))
        # the id before the body: a proxy keeps a conversation on this replica by it
        # (deploy/haproxy.cfg sticks previous_response_id to the server that sent it)
        headers = {RESPONSE_ID_HEADER: prep.id}
        if body.stream:
            return Streamed(self.stream(prep, streams), {**SSE_HEADERS, **headers})
        return Complete(await guard(self.complete(prep, streams)), headers=headers)

    # -- stored responses ----------------------------------------------------------------
    async def get(self, response_id: str, scope: CacheScope = SHARED) -> dict[str, Any]:
        return (await self._stored(response_id, scope)).response

    async def input_items(self, response_id: str,
                          scope: CacheScope = SHARED) -> dict[str, Any]:
        items = (await self._stored(response_id, scope)).input_items
        return {"object": "list", "data": items, "has_more": False,
                "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None}

    async def delete(self, response_id: str, scope: CacheScope = SHARED) -> dict[str, Any]:
        await self._stored(response_id, scope)  # another tenant's is as good as unknown
        if not await run_in_threadpool(self.store.delete, response_id):
            raise _not_found(response_id, "response_id")
        return {"id": response_id, "object": "response", "deleted": True}

    async def _stored(self, response_id: str, scope: CacheScope,
                      param: str = "response_id") -> StoredResponse:
        rec = await run_in_threadpool(self.store.get, response_id)
        if rec is None or rec.tenant != scope.tenant:
            raise _not_found(response_id, param)
        return rec

    # -- preparing -----------------------------------------------------------------------
    async def prepare(self, body: ResponsesRequest,
                      scope: CacheScope = SHARED) -> PreparedResponse:
        _check_supported(body)
        prev = None
        if body.previous_response_id:
            prev = await self._stored(body.previous_response_id, scope,
                                      "previous_response_id")
        history = list(prev.messages) if prev else []
        new = input_messages(body.input)
        messages = history + new
        rid = new_id("resp")
        session = prev.session if prev else SESSION_PREFIX + rid
        chat_body = _chat_request(body, messages, prev)
        prepared = await self.chat.prepare(chat_body, session, scope)
        return PreparedResponse(body, prepared, rid, int(time.time()),
                                body.prompt_cache_key or session, messages,
                                _input_items(body.input), scope.tenant)

    # -- running -------------------------------------------------------------------------
    async def complete(self, prep: PreparedResponse, streams: list[RequestStream]
                       ) -> dict[str, Any]:
        try:
            text, lps, fin = await collect(streams[0])
        finally:  # a cancelled (disconnected) request stops generating
            abort_unfinished(self.chat.engine, prep.chat.requests, streams)
        message = prep.chat.output().message(text)
        status = "incomplete" if fin.reason == "length" else "completed"
        logprobs = logprobs_json(lps)["content"] if prep.body.logprobs else None
        items = output_items(message, logprobs, status)
        response = self._response(prep, status, items, fin.usage, message)
        await self._save(prep, message, response)
        return response

    async def stream(self, prep: PreparedResponse, streams: list[RequestStream]
                     ) -> AsyncIterator[bytes]:
        write = EventWriter()
        out = OutputEvents(write, prep.body.logprobs)
        shaper = prep.chat.output()
        events = MergedStreams(streams, self.chat.settings.keepalive_seconds)
        parts: list[str] = []
        try:
            start = self._response(prep, "in_progress", [], None, None)
            yield write("response.created", response=start)
            yield write("response.in_progress", response=start)
            while events.open:
                _, event = await events.next()
                if event is None:
                    yield sse_comment()
                elif isinstance(event, Delta):
                    parts.append(event.text)
                    lps = logprobs_json(event.logprobs)["content"] if event.logprobs else None
                    deltas = shaper.deltas(event.text)
                    for j, delta in enumerate(deltas):
                        for frame in out.feed(delta, lps if j == 0 else None):
                            yield frame
                elif isinstance(event, Finished):
                    for delta in shaper.final_deltas():
                        for frame in out.feed(delta):
                            yield frame
                    for frame in out.finish():
                        yield frame
                    status = "incomplete" if event.reason == "length" else "completed"
                    message = prep.chat.output().message("".join(parts))
                    response = self._response(prep, status, out.items, event.usage, message)
                    await self._save(prep, message, response)
                    yield write(f"response.{status}", response=response)
                elif isinstance(event, Failed):
                    failed = self._response(prep, "failed", out.items, None, None)
                    failed["error"] = {"code": event.code or "server_error",
                                       "message": event.message}
                    yield write("response.failed", response=failed)
                    return
        finally:
            events.close()
            abort_unfinished(self.chat.engine, prep.chat.requests, streams)

    async def _save(self, prep: PreparedResponse, message: Message,
                    response: dict[str, Any]) -> None:
        if not prep.body.store:
            return
        rec = StoredResponse(prep.id, prep.session,
                             prep.messages + [history_message(message)],
                             prep.input_items, response, prep.tenant)
        await run_in_threadpool(self.store.put, rec)

    def _response(self, prep: PreparedResponse, status: str, items: list[dict[str, Any]],
                  usage: Usage | None, message: Message | None) -> dict[str, Any]:
        body = prep.body
        sampling = prep.chat.requests[0].sampling
        fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) \
            if body.text and body.text.format else {"type": "text"}
        return {
            "id": prep.id, "object": "response", "created_at": prep.created,
            "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "model": prep.chat.model_name, "output": items,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                          "summary": None},
            "store": body.store, "temperature": sampling.temperature,
            "text": {"format": fmt}, "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [], "top_p": sampling.top_p,
            "top_logprobs": body.top_logprobs or 0, "truncation": "disabled",
            "usage": self._usage(prep, usage, message) if usage else None,
            "user": body.user, "metadata": body.metadata or {}, "background": False,
        }

    def _usage(self, prep: PreparedResponse, usage: Usage,
               message: Message | None) -> dict[str, Any]:
        reasoning = (message or {}).get("reasoning_content") or ""
        tok = prep.chat.handle.tokenizer
        return {"input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {
                    "reasoning_tokens": len(tok.encode(reasoning)) if reasoning else 0},
                "total_tokens": usage.total_tokens}


def _check_supported(body: ResponsesRequest) -> None:
    if body.background:
        raise APIError(400, "background responses are not supported by this server",
                       param="background")
    if body.truncation == "auto":
        raise APIError(400, "truncation 'auto' is not supported: this server never drops "
                       "input; a conversation past the context is a 400", param="truncation")
    for value in body.include or []:
        if value != LOGPROBS_INCLUDE and value not in INCLUDES_WITHOUT_EFFECT:
            raise APIError(400, f"include value {value!r} is not supported (supported: "
                           f"{LOGPROBS_INCLUDE!r})", param="include")


def _chat_request(body: ResponsesRequest, messages: list[Message],
                  prev: StoredResponse | None) -> ChatCompletionRequest:
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    fields: dict[str, Any] = {
        "model": body.model or (prev.response["model"] if prev else None),
        "messages": system + messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
        "min_p": body.min_p, "seed": body.seed,
        "repetition_penalty": body.repetition_penalty,
        "logprobs": body.logprobs, "top_logprobs": body.top_logprobs,
        "tools": chat_tools(body.tools), "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "prompt_cache_key": body.prompt_cache_key, "user": body.user,
        "cache_salt": body.cache_salt,
        "reasoning_effort": body.reasoning.effort if body.reasoning else None,
    }
    fmt = body.text.format if body.text else None
    if fmt is not None and fmt.type == "json_schema":
        fields["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name or "response", "schema": fmt.schema_ or {},
            "strict": fmt.strict, "description": fmt.description}}
    elif fmt is not None:
        fields["response_format"] = {"type": fmt.type}
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise APIError(400, f"{where}: {err['msg']}", param=where or None) from exc


def _input_items(inp: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as stored items, each with an id."""
    if isinstance(inp, str):
        inp = [{"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": inp}]}]
    return [{"id": item.get("id") or new_id("msg"), **item} for item in inp]


def _not_found(response_id: str, param: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="response_not_found")
