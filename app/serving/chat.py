"""Chat completions between the HTTP route and the engine (async, no MLX).

Everything that can fail for a bad request (model name, parameters, template,
context length) is checked in `prepare()`, before the first byte is sent; `start()`
then waits for the engine's admission (a refusal is still a plain HTTP error), and the
reply streams or completes. `handle()` is that whole sequence, for the route.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jinja2
from starlette.concurrency import run_in_threadpool

from app.engine.engine import Engine
from app.engine.models import ChatModelHandle
from app.engine.request import (
    Delta,
    Failed,
    Finished,
    GenerationRequest,
    TokenLogprob,
    Usage,
)
from app.engine.stream import RequestStream
from app.models.registry import Registry
from app.protocol.chat import ChatCompletionRequest
from app.protocol.errors import APIError
from app.protocol.sse import SSE_DONE, SSE_HEADERS, SSEFrames, sse_comment, sse_data
from app.serving.chat_output import ChoiceOutput, logprobs_json, usage_json
from app.serving.generation import (
    MergedStreams,
    abort_unfinished,
    admit,
    chat_model,
    collect,
    max_new_tokens,
    sampling_params,
    with_seed,
)
from app.serving.reply import Complete, Guard, Reply, Streamed, failure_event
from app.serving.structured import StructuredOutput
from app.serving.tenancy import SHARED, CacheScope
from app.serving.tools import ToolPlan
from app.serving.tools import plan as tool_plan
from app.settings import Settings
from app.text.chat_template import ChatTemplateError
from app.text.reply_parser import THINK_OPEN, ReplyParser

logger = logging.getLogger(__name__)

CACHE_HEADER = "x-mlxd-cache"  # "hit; reused=N" or "miss; reason=...; reused=N"


@dataclass(slots=True)
class PreparedChat:
    body: ChatCompletionRequest
    handle: ChatModelHandle
    requests: list[GenerationRequest]
    id: str
    created: int
    cache_info: str | None = None
    """How the prompt met the resident KV cache (for the response header)."""
    tools: ToolPlan | None = None
    reasoning: bool = False
    """Split `<think>` reasoning out of replies."""
    thinking: bool = False
    """The prompt opened `<think>`: replies start inside reasoning."""
    frames: SSEFrames = field(init=False)
    """The stream's chunks: everything but the choice serialised once."""

    def __post_init__(self) -> None:
        self.frames = SSEFrames({"id": self.id, "object": "chat.completion.chunk",
                                 "created": self.created, "model": self.model_name,
                                 "system_fingerprint": _fp(self)}, "choices")

    def output(self) -> ChoiceOutput:
        """A fresh output shaper for one choice."""
        syntax = self.tools.syntax if self.tools is not None else None
        if syntax is None and not self.reasoning:
            return ChoiceOutput()
        return ChoiceOutput(ReplyParser(syntax, self.reasoning, self.thinking))

    @property
    def model_name(self) -> str:
        return self.handle.spec.id


class ChatService:
    def __init__(self, engine: Engine, registry: Registry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings
        self.structured = StructuredOutput()

    async def handle(self, body: ChatCompletionRequest, session: str | None,
                     guard: Guard, scope: CacheScope = SHARED) -> Reply:
        """A whole request: prepare, admission under `guard`, then the reply."""
        prepared = await self.prepare(body, session, scope)
        streams = await guard(self.start(prepared))
        headers = {CACHE_HEADER: prepared.cache_info} if prepared.cache_info else {}
        if body.stream:
            return Streamed(self.stream(prepared, streams), {**SSE_HEADERS, **headers})
        return Complete(await guard(self.complete(prepared, streams)), headers=headers)

    async def prepare(self, body: ChatCompletionRequest, session: str | None,
                      scope: CacheScope = SHARED) -> PreparedChat:
        """`session` is the client's own name for its KV session; `scope` says whose
        caches the request may use (its tenant and cache_salt)."""
        handle = await chat_model(self.engine, self.registry, body.model)
        spec = handle.spec
        tools = tool_plan(body, handle.tokenizer.chat_template)
        prompt, thinking = await run_in_threadpool(self._render, body, handle, tools)
        max_tokens = max_new_tokens(body.max_completion_tokens or body.max_tokens, len(prompt),
                                    handle, self.settings.default_max_tokens, "messages")
        sampling = sampling_params(body, handle, logprobs=body.logprobs,
                                   top_logprobs=body.top_logprobs or 0)
        key = scope.key(body.prompt_cache_key or session)
        namespace = scope.salted(body.cache_salt).namespace
        constraints = await self.structured.constraints(body, handle, max_tokens,
                                                        tools.syntax, tools.forced_grammar)
        reqs = []
        for i in range(body.n):
            params = sampling if i == 0 else with_seed(sampling, i)
            reqs.append(GenerationRequest(spec.id, prompt, max_tokens, params,
                                          body.stop_list(), key, constraints[i],
                                          cache_namespace=namespace))
        reasoning = THINK_OPEN in (handle.tokenizer.chat_template or "")
        return PreparedChat(body, handle, reqs, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()),
                            tools=tools, reasoning=reasoning, thinking=reasoning and thinking)

    def _render(self, body: ChatCompletionRequest, handle: ChatModelHandle,
                tools: ToolPlan) -> tuple[list[int], bool]:
        """Prompt tokens, and whether the prompt leaves the reply inside `<think>`."""
        variables = dict(body.chat_template_kwargs or {})
        if body.reasoning_effort is not None:
            variables.setdefault("reasoning_effort", body.reasoning_effort)
        try:
            text = handle.tokenizer.apply_chat_template(
                tools.messages, add_generation_prompt=True, tools=tools.template_tools,
                **variables)
        except (ChatTemplateError, jinja2.TemplateError) as exc:
            # template errors (raise_exception) are the client's input
            raise APIError(400, f"chat template error: {exc}", param="messages") from exc
        except Exception as exc:  # a renderer's own failure: its text would name internals
            logger.warning("chat template failed: %r", exc)
            raise APIError(400, "chat template error: the template cannot render this request",
                           param="messages") from exc
        thinking = text.rstrip().endswith(THINK_OPEN)
        return handle.tokenizer.encode(text, add_special_tokens=False), thinking

    # -- running ----------------------------------------------------------------
    async def start(self, prep: PreparedChat) -> list[RequestStream]:
        """Submit and wait for admission, so a refusal is a plain HTTP error (before 200)."""
        streams, prep.cache_info = await admit(self.engine, prep.requests)
        return streams

    def _abort_unfinished(self, prep: PreparedChat, streams: list[RequestStream]) -> None:
        abort_unfinished(self.engine, prep.requests, streams)

    async def complete(self, prep: PreparedChat, streams: list[RequestStream]) -> dict[str, Any]:
        try:
            results = await asyncio.gather(*(collect(s) for s in streams))
        finally:  # a cancelled (disconnected) request stops generating
            self._abort_unfinished(prep, streams)
        choices = []
        usage = Usage(0, 0)
        for i, (text, lps, fin) in enumerate(results):
            out = prep.output()
            choices.append({"index": i, "message": out.message(text),
                            "logprobs": logprobs_json(lps) if prep.body.logprobs else None,
                            "finish_reason": out.finish_reason(fin.reason)})
            usage.add_choice(fin.usage)
        return {"id": prep.id, "object": "chat.completion", "created": prep.created,
                "model": prep.model_name, "system_fingerprint": _fp(prep),
                "choices": choices, "usage": usage_json(usage)}

    async def stream(self, prep: PreparedChat, streams: list[RequestStream]
                     ) -> AsyncIterator[bytes]:
        events = MergedStreams(streams, self.settings.keepalive_seconds)
        include_usage = bool(prep.body.stream_options and prep.body.stream_options.include_usage)
        usage = Usage(0, 0)
        outputs = [prep.output() for _ in streams]
        try:
            for i in range(len(streams)):
                yield self._chunk(prep, i, {"role": "assistant", "content": ""})
            while events.open:
                i, event = await events.next()
                if event is None:
                    yield sse_comment()
                elif isinstance(event, Delta):
                    deltas = outputs[i].deltas(event.text)
                    lps = event.logprobs if prep.body.logprobs else None
                    if not deltas and lps:
                        deltas = [{"content": ""}]  # the tokens' logprobs still go out
                    for j, delta in enumerate(deltas):
                        yield self._chunk(prep, i, delta, logprobs=lps if j == 0 else None)
                elif isinstance(event, Finished):
                    usage.add_choice(event.usage)
                    for delta in outputs[i].final_deltas():
                        yield self._chunk(prep, i, delta)
                    yield self._chunk(prep, i, {}, finish=outputs[i].finish_reason(event.reason))
                elif isinstance(event, Failed):
                    # Headers are gone: report in-band, OpenAI style, and end the stream.
                    yield sse_data(failure_event(event))
                    yield SSE_DONE  # the stream is over: clients waiting for it stop
                    return
            if include_usage:
                yield sse_data({"id": prep.id, "object": "chat.completion.chunk",
                                "created": prep.created, "model": prep.model_name,
                                "system_fingerprint": _fp(prep), "choices": [],
                                "usage": usage_json(usage)})
            yield SSE_DONE
        finally:
            events.close()
            self._abort_unfinished(prep, streams)

    def _chunk(self, prep: PreparedChat, index: int, delta: dict[str, Any], *,
               finish: str | None = None, logprobs: list[TokenLogprob] | None = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "delta": delta,
                                  "logprobs": logprobs_json(logprobs) if logprobs else None,
                                  "finish_reason": finish}
        return prep.frames.item(choice)


def _fp(prep: PreparedChat) -> str:
    return "fp_" + prep.handle.fingerprint[:12]
