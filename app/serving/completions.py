"""Legacy completions between the route and the engine: prompts (text or token ids) in,
text out, OpenAI's `text_completion` shapes. `handle()` prepares, waits for admission
and streams or completes, as chat does (serving/chat.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.engine.engine import Engine
from app.engine.models import ChatModelHandle
from app.engine.request import Delta, Failed, Finished, GenerationRequest, TokenLogprob, Usage
from app.engine.stream import RequestStream
from app.models.registry import Registry
from app.protocol.completions import CompletionRequest
from app.protocol.errors import APIError
from app.protocol.sse import SSE_DONE, SSE_HEADERS, SSEFrames, sse_comment, sse_data
from app.serving.chat_output import floor_logprob, usage_json
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
from app.serving.tenancy import SHARED, CacheScope
from app.settings import Settings


@dataclass(slots=True)
class PreparedCompletion:
    body: CompletionRequest
    handle: ChatModelHandle
    requests: list[GenerationRequest]
    echoes: list[str]
    """Per choice: the prompt text put in front of it (echo), else ''."""
    id: str
    created: int
    frames: SSEFrames = field(init=False)
    """The stream's chunks: everything but the choice serialised once."""

    def __post_init__(self) -> None:
        self.frames = SSEFrames({"id": self.id, "object": "text_completion",
                                 "created": self.created, "model": self.handle.spec.id},
                                "choices")


class CompletionService:
    def __init__(self, engine: Engine, registry: Registry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings

    async def handle(self, body: CompletionRequest, guard: Guard,
                     scope: CacheScope = SHARED) -> Reply:
        prepared = await self.prepare(body, scope)
        streams, _ = await guard(admit(self.engine, prepared.requests))
        if body.stream:
            return Streamed(self.stream(prepared, streams), dict(SSE_HEADERS))
        return Complete(await guard(self.complete(prepared, streams)))

    async def prepare(self, body: CompletionRequest,
                      scope: CacheScope = SHARED) -> PreparedCompletion:
        if body.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported by this server",
                           param="suffix", code="unsupported_parameter")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of other than n is not supported (choices are not "
                           "ranked on the server)", param="best_of",
                           code="unsupported_parameter")
        if body.echo and body.logprobs is not None:
            raise APIError(400, "echo together with logprobs is not supported (the prompt's "
                           "own log-probabilities are not computed)", param="echo",
                           code="unsupported_parameter")
        handle = await chat_model(self.engine, self.registry, body.model)
        spec = handle.spec
        prompts = await run_in_threadpool(self._tokenize, body, handle)
        top = body.logprobs or 0
        sampling = sampling_params(body, handle, logprobs=body.logprobs is not None,
                                   top_logprobs=top)
        namespace = scope.salted(body.cache_salt).namespace
        requests, echoes = [], []
        for ids, text in prompts:
            max_tokens = max_new_tokens(body.max_tokens, len(ids), handle,
                                        self.settings.default_max_tokens, "prompt")
            for i in range(body.n):
                params = sampling if i == 0 else with_seed(sampling, i)
                requests.append(GenerationRequest(spec.id, ids, max_tokens, params,
                                                  body.stop_list(),
                                                  cache_namespace=namespace))
                echoes.append(text if body.echo else "")
        return PreparedCompletion(body, handle, requests, echoes, f"cmpl-{uuid.uuid4().hex}",
                                  int(time.time()))

    @staticmethod
    def _tokenize(body: CompletionRequest, handle: ChatModelHandle
                  ) -> list[tuple[list[int], str]]:
        """(token ids, text) of each prompt; a prompt is used as it is, no chat template."""
        out = []
        tok = handle.tokenizer
        for prompt in body.prompts():
            if isinstance(prompt, str):
                ids = tok.encode(prompt, add_special_tokens=True)
                out.append((ids, prompt))
            else:
                if any(not 0 <= t < tok.vocab_size for t in prompt):
                    raise APIError(400, f"prompt token ids must be in 0..{tok.vocab_size - 1}",
                                   param="prompt")
                out.append((prompt, tok.decode(prompt)))
            if not out[-1][0]:
                raise APIError(400, "a prompt is empty", param="prompt")
        return out

    async def complete(self, prep: PreparedCompletion,
                       streams: list[RequestStream]) -> dict[str, Any]:
        try:
            results = await asyncio.gather(*(collect(s) for s in streams))
        finally:  # a cancelled (disconnected) request stops generating
            abort_unfinished(self.engine, prep.requests, streams)
        usage = Usage(0, 0)
        choices = []
        for i, (text, lps, fin) in enumerate(results):
            choices.append(self._choice(prep, i, prep.echoes[i] + text, lps, fin.reason))
            _add_usage(usage, fin.usage, i, prep.body.n)
        return {"id": prep.id, "object": "text_completion", "created": prep.created,
                "model": prep.handle.spec.id, "choices": choices, "usage": usage_json(usage)}

    async def stream(self, prep: PreparedCompletion,
                     streams: list[RequestStream]) -> AsyncIterator[bytes]:
        events = MergedStreams(streams, self.settings.keepalive_seconds)
        usage = Usage(0, 0)
        include_usage = bool(prep.body.stream_options and prep.body.stream_options.include_usage)
        offsets = [len(e) for e in prep.echoes]
        try:
            for i, echo in enumerate(prep.echoes):
                if echo:
                    yield self._chunk(prep, self._choice(prep, i, echo, [], None))
            while events.open:
                i, event = await events.next()
                if event is None:
                    yield sse_comment()
                elif isinstance(event, Delta):
                    if event.text or event.logprobs:
                        yield self._chunk(prep, self._choice(prep, i, event.text,
                                                             event.logprobs, None, offsets[i]))
                        offsets[i] += len(event.text)
                elif isinstance(event, Finished):
                    _add_usage(usage, event.usage, i, prep.body.n)
                    yield self._chunk(prep, self._choice(prep, i, "", [], event.reason))
                elif isinstance(event, Failed):
                    yield sse_data(failure_event(event))
                    yield SSE_DONE  # the stream is over: clients waiting for it stop
                    return
            if include_usage:
                yield sse_data({"id": prep.id, "object": "text_completion",
                                "created": prep.created, "model": prep.handle.spec.id,
                                "choices": [], "usage": usage_json(usage)})
            yield SSE_DONE
        finally:
            events.close()
            abort_unfinished(self.engine, prep.requests, streams)

    def _choice(self, prep: PreparedCompletion, index: int, text: str, lps: list[TokenLogprob],
                finish: str | None, offset: int = 0) -> dict[str, Any]:
        logprobs = _logprobs_json(lps, offset) if prep.body.logprobs is not None else None
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def _chunk(self, prep: PreparedCompletion, choice: dict[str, Any]) -> bytes:
        return prep.frames.item(choice)


def _add_usage(total: Usage, one: Usage, index: int, n: int) -> None:
    """Choices of one prompt share it; several prompts add theirs up."""
    if index % n == 0:
        total.prompt_tokens += one.prompt_tokens
        total.cached_tokens += one.cached_tokens
    total.completion_tokens += one.completion_tokens


def _logprobs_json(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy shape: parallel lists, alternatives as {token: logprob} maps."""
    offsets = []
    for lp in lps:
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": [lp.token for lp in lps],
            "token_logprobs": [floor_logprob(lp.logprob) for lp in lps],
            "top_logprobs": [{t: floor_logprob(v) for t, v in lp.top} for lp in lps],
            "text_offset": offsets}
