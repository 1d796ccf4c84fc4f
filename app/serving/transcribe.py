"""Transcriptions between the HTTP route and the engine (async, no MLX calls).

Validation and audio decoding happen before the first byte; the engine then runs
the job window by window and the result is rendered in the requested format.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.api.errors import APIError, model_not_found
from app.api.sse import sse_data
from app.audio.decode import AudioDecodeError, decode_audio
from app.audio.formats import GRANULARITIES, RESPONSE_FORMATS
from app.engine.engine import Engine, TranscriptionModelHandle
from app.engine.request import Failed, TranscriptDone, TranscriptSegments
from app.engine.stream import RequestStream
from app.models.registry import Registry
from app.settings import Settings

logger = logging.getLogger(__name__)



@dataclass(slots=True)
class TranscriptionParams:
    model: str | None
    language: str | None
    prompt: str | None
    response_format: str
    temperature: float | None
    granularities: list[str]
    stream: bool
    task: str = "transcribe"


@dataclass(slots=True)
class PreparedTranscription:
    handle: TranscriptionModelHandle
    job: Any
    params: TranscriptionParams


class TranscriptionService:
    def __init__(self, engine: Engine, registry: Registry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings

    async def prepare(self, audio: bytes, p: TranscriptionParams) -> PreparedTranscription:
        if p.response_format not in RESPONSE_FORMATS:
            raise APIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                           param="response_format")
        bad = [g for g in p.granularities if g not in GRANULARITIES]
        if bad:
            raise APIError(400, f"timestamp_granularities must be among {GRANULARITIES}",
                           param="timestamp_granularities[]")
        if p.temperature is not None and not 0.0 <= p.temperature <= 1.0:
            raise APIError(400, "temperature must be between 0 and 1", param="temperature")
        name = p.model or self.registry.default_transcription
        spec = self.registry.get(name) if name else None
        if spec is None:
            raise model_not_found(name or "")
        if spec.kind != "transcription":
            raise APIError(400, f"model {spec.id!r} is a {spec.kind} model, not a "
                           "transcription model", param="model", code="model_not_supported")
        if not audio:
            raise APIError(400, "the uploaded file is empty", param="file")
        try:
            samples = await run_in_threadpool(decode_audio, audio)
        except AudioDecodeError as exc:
            raise APIError(400, f"could not decode audio: {exc}", param="file",
                           code="invalid_audio") from exc
        handle = await self.engine.transcription_model(spec)
        if p.task == "translate" and not handle.is_multilingual:
            raise APIError(400, f"model {spec.id!r} is English-only and cannot translate",
                           param="model", code="model_not_supported")
        from app.models.whisper import TranscribeOptions, TranscriptionJob

        options = TranscribeOptions(
            language=p.language, task=p.task, prompt=p.prompt,
            temperature=p.temperature or None, word_timestamps="word" in p.granularities)
        try:
            # The constructor computes the log-mel spectrogram in numpy: off the engine thread.
            job = await run_in_threadpool(TranscriptionJob, handle.bundle, samples, options)
        except ValueError as exc:
            raise APIError(400, str(exc), param="language") from exc
        return PreparedTranscription(handle, job, p)

    def submit(self, prep: PreparedTranscription) -> tuple[int, RequestStream]:
        return self.engine.submit_transcription(prep.job, prep.handle.spec.id)

    async def complete(self, prep: PreparedTranscription) -> Any:
        task_id, stream = self.submit(prep)
        try:
            async for event in stream:
                if isinstance(event, TranscriptDone):
                    return event.result
                if isinstance(event, Failed):
                    raise APIError(event.status, event.message, type=event.type, code=event.code)
            raise APIError(500, "transcription ended without a result")
        finally:
            if not stream.closed:
                self.engine.abort_transcription(task_id)

    async def stream(self, prep: PreparedTranscription) -> AsyncIterator[bytes]:
        """OpenAI's streaming shape: transcript.text.delta events, then transcript.text.done."""
        task_id, stream = self.submit(prep)
        emitted = False
        held = ""  # trailing whitespace waits: the final text is stripped at both ends
        try:
            async for event in stream:
                if isinstance(event, TranscriptSegments):
                    text = held + "".join(s.text for s in event.segments)
                    if not emitted:
                        text = text.lstrip()
                    body = text.rstrip()
                    held = text[len(body):]
                    if body:
                        emitted = True
                        yield sse_data({"type": "transcript.text.delta", "delta": body})
                elif isinstance(event, TranscriptDone):
                    yield sse_data({"type": "transcript.text.done", "text": event.result.text,
                                    "usage": usage_json(event.result)})
                    return
                elif isinstance(event, Failed):
                    yield sse_data({"type": "error", "error": {
                        "message": event.message, "type": event.type, "param": None,
                        "code": event.code}})
                    return
        finally:
            if not stream.closed:
                self.engine.abort_transcription(task_id)


def usage_json(result: Any) -> dict[str, Any]:
    # OpenAI bills whisper-1 by duration; report the same shape.
    return {"type": "duration", "seconds": round(float(result.duration), 3)}
