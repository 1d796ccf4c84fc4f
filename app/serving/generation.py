"""What chat and legacy completions share between a route and the engine: sampling
parameters from a request, admission, collecting or merging streams, aborting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from app.engine.engine import Engine
from app.engine.models import ChatModelHandle
from app.engine.request import (
    Admitted,
    Delta,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)
from app.engine.stream import RequestStream
from app.models.registry import ModelSpec, Registry, SourceUnavailable
from app.protocol.errors import APIError, model_not_found
from app.protocol.sampling import GenerationFields
from app.serving.reply import failure_error

logger = logging.getLogger(__name__)
_reported: set[str] = set()
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                     "repetition_penalty": 1.0}
StreamEvent = Delta | Finished | Failed | None
"""A choice's event, or None when a keepalive is due."""


def model_spec(registry: Registry, name: str | None, default: str | None,
               kind: str) -> ModelSpec:
    """The declared model a request names (None: `default`), or the 4xx that says why
    not: unknown, or not of `kind`."""
    name = name or default
    spec = registry.get(name) if name else None
    if spec is None:
        raise model_not_found(name or "")
    if spec.kind != kind:
        raise APIError(400, f"model {spec.id!r} is a {spec.kind} model, not a {kind} model",
                       param="model", code="model_not_supported")
    return spec


async def chat_model(engine: Engine, registry: Registry, name: str | None) -> ChatModelHandle:
    """The loaded chat model a request names (None: the default), or the 4xx that says why
    not: unknown, not a chat model, or declared but not loadable here."""
    spec = model_spec(registry, name, registry.default_chat, "chat")
    try:
        return await engine.chat_model(spec)
    except SourceUnavailable as exc:
        raise unavailable(spec.id, exc) from exc


def unavailable(model_id: str, exc: SourceUnavailable) -> APIError:
    """A declared model whose files cannot be had here: a 404 with the cause, logged once."""
    if model_id not in _reported:
        _reported.add(model_id)
        logger.warning("model %s cannot be loaded: %s", model_id, exc)
    return APIError(404, f"The model '{model_id}' cannot be loaded on this server: {exc}",
                    param="model", code="model_not_found")


def sampling_params(body: GenerationFields, handle: ChatModelHandle, *, logprobs: bool,
                    top_logprobs: int) -> SamplingParams:
    defaults = {**SAMPLING_DEFAULTS, **handle.spec.defaults}

    def pick(name: str) -> Any:
        val = getattr(body, name)
        return defaults[name] if val is None else val

    bias: dict[int, float] = {}
    vocab = handle.tokenizer.vocab_size
    for key, val in (body.logit_bias or {}).items():
        tid = int(key)
        if not 0 <= tid < vocab:
            raise APIError(400, f"logit_bias token id {tid} is outside the vocabulary "
                           f"(0..{vocab - 1})", param="logit_bias")
        bias[tid] = val
    return SamplingParams(
        temperature=float(pick("temperature")), top_p=float(pick("top_p")),
        top_k=int(pick("top_k")), min_p=float(pick("min_p")), seed=body.seed,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        repetition_penalty=float(pick("repetition_penalty")), logit_bias=bias,
        logprobs=logprobs, top_logprobs=top_logprobs,
    )


def with_seed(params: SamplingParams, offset: int) -> SamplingParams:
    """The parameters of the `offset`-th of `n` choices (seeded choices differ)."""
    return replace(params, seed=None if params.seed is None else params.seed + offset)


def max_new_tokens(requested: int | None, prompt_tokens: int, handle: ChatModelHandle,
                   default: int | None, param: str) -> int:
    """The token budget of a reply, or the 400 when prompt and request exceed the context."""
    ctx = handle.context_length
    if prompt_tokens >= ctx or (requested is not None and prompt_tokens + requested > ctx):
        want = f"{prompt_tokens} prompt tokens" + \
            (f" + {requested} max tokens" if requested else "")
        raise APIError(400, f"This model's maximum context length is {ctx} tokens; "
                       f"the request has {want}.", param=param, code="context_length_exceeded")
    limit = requested or handle.spec.defaults.get("max_tokens") or default
    return min(limit or ctx, ctx - prompt_tokens)


async def admit(engine: Engine, requests: Sequence[GenerationRequest]
                ) -> tuple[list[RequestStream], str | None]:
    """Submit and wait for admission, so a refusal is a plain HTTP error (before 200).
    Returns the streams and how the prompt met the KV cache."""
    streams = [engine.submit(r) for r in requests]
    cache_info = None
    try:
        for stream in streams:
            event = await stream.get()
            if isinstance(event, Failed):
                raise failure_error(event)
            assert isinstance(event, Admitted)
            cache_info = cache_info or event.cache_info
    except BaseException:
        abort_unfinished(engine, requests, streams)
        raise
    return streams, cache_info


def abort_unfinished(engine: Engine, requests: Sequence[GenerationRequest],
                     streams: Sequence[RequestStream]) -> None:
    for req, stream in zip(requests, streams):
        if not stream.closed:
            engine.abort(req.id)


async def collect(stream: RequestStream) -> tuple[str, list[TokenLogprob], Finished]:
    """A whole reply: its text, logprobs and final event (or the failure, raised)."""
    parts: list[str] = []
    lps: list[TokenLogprob] = []
    async for event in stream:
        if isinstance(event, Delta):
            parts.append(event.text)
            lps.extend(event.logprobs)
        elif isinstance(event, Finished):
            return "".join(parts), lps, event
        elif isinstance(event, Failed):
            raise failure_error(event)
    raise APIError(500, "generation ended without a result")


class MergedStreams:
    """The events of a request's choices in arrival order, None where a keepalive is due;
    `open` counts the choices not yet finished. Call `close()` when done with it."""

    def __init__(self, streams: Sequence[RequestStream], keepalive: float) -> None:
        self._keepalive = keepalive
        # One choice (the usual case) is read directly: a pump task and a queue would add
        # two task switches to every token.
        self._single = streams[0] if len(streams) == 1 else None
        self._queue: asyncio.Queue[tuple[int, StreamEvent]] = asyncio.Queue()
        self._pumps = [] if self._single is not None else [
            asyncio.create_task(self._pump(i, s, keepalive)) for i, s in enumerate(streams)]
        self.open = len(streams)

    async def next(self) -> tuple[int, StreamEvent]:
        if self._single is not None:
            index, event = 0, _choice_event(await self._single.get(timeout=self._keepalive))
        else:
            index, event = await self._queue.get()
        if isinstance(event, (Finished, Failed)):
            self.open -= 1
        return index, event

    def close(self) -> None:
        for task in self._pumps:
            task.cancel()

    async def _pump(self, index: int, stream: RequestStream, keepalive: float) -> None:
        while True:
            event = _choice_event(await stream.get(timeout=keepalive))
            await self._queue.put((index, event))
            if isinstance(event, (Finished, Failed)):
                return


def _choice_event(event: Event | None) -> StreamEvent:
    """A chat or completion stream's event after admission (the type says so)."""
    assert event is None or isinstance(event, (Delta, Finished, Failed))
    return event
