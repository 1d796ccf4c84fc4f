"""Transcriptions between the HTTP route and the engine (async, no MLX calls).

Shaped like chat (serving/chat.py): `prepare()` validates the fields and decodes the
audio before the first byte; `start()` waits for the engine's admission; the reply then
streams (`transcript.text.delta` events) or completes, rendered in the requested
format. `handle()` is that whole sequence, for the route.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.audio.decode import AudioDecodeError, AudioTooLong, decode_audio
from app.audio.formats import GRANULARITIES, RESPONSE_FORMATS, render
from app.audio.transcript import TranscribeOptions, TranscriptionResult
from app.engine.engine import Engine
from app.engine.models import TranscriptionModelHandle
from app.engine.request import Admitted, Failed, TranscriptDone, TranscriptSegments
from app.engine.stream import RequestStream
from app.models.registry import Registry, SourceUnavailable
from app.models.whisper.transcribe import TranscriptionJob
from app.protocol.errors import APIError
from app.protocol.sse import SSE_HEADERS, sse_data
from app.protocol.transcription import TranscriptionParams
from app.serving.generation import model_spec, unavailable
from app.serving.reply import Complete, Guard, Reply, Streamed, failure_error, failure_event
from app.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_GRANULARITIES = ("segment",)
# Names that ask for "a Whisper", not a particular one: translations may go elsewhere.
GENERIC_NAMES = ("whisper-1",)


@dataclass(slots=True)
class PreparedTranscription:
    handle: TranscriptionModelHandle
    job: TranscriptionJob
    params: TranscriptionParams


@dataclass(slots=True)
class TranscriptionRun:
    """An admitted job: its engine task id and the stream its events arrive on."""

    task_id: int
    stream: RequestStream


class TranscriptionService:
    def __init__(self, engine: Engine, registry: Registry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings

    async def handle(self, audio: bytes, params: TranscriptionParams, guard: Guard) -> Reply:
        """A whole request: prepare, admission under `guard`, then the reply."""
        prepared = await self.prepare(audio, params)
        run = await guard(self.start(prepared))
        if params.stream:
            return Streamed(self.stream(run), dict(SSE_HEADERS))
        result = await guard(self.complete(run))
        body, media = render(result, params.response_format,
                             params.granularities or DEFAULT_GRANULARITIES)
        return Complete(body, media)

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
        spec = model_spec(self.registry, p.model, self.registry.default_transcription,
                          "transcription")
        if not audio:
            raise APIError(400, "the uploaded file is empty", param="file")
        try:
            samples = await run_in_threadpool(decode_audio, audio,
                                              max_seconds=self.settings.max_audio_seconds)
        except AudioTooLong as exc:
            raise APIError(400, f"{exc} (MLXD_MAX_AUDIO_SECONDS)", param="file",
                           code="audio_too_long") from exc
        except AudioDecodeError as exc:
            raise APIError(400, f"could not decode audio: {exc}", param="file",
                           code="invalid_audio") from exc
        try:
            handle = await self.engine.transcription_model(spec)
        except SourceUnavailable as exc:
            raise unavailable(spec.id, exc) from exc
        if p.task == "translate" and not handle.is_multilingual:
            handle = await self._translator(p.model, handle)
        options = TranscribeOptions(
            language=p.language, task=p.task, prompt=p.prompt,
            temperature=p.temperature or None, word_timestamps="word" in p.granularities,
            window_time_limit=self.settings.max_transcribe_window_seconds)
        try:
            # The constructor computes the log-mel spectrogram in numpy: off the engine thread.
            job = await run_in_threadpool(TranscriptionJob, handle.bundle, samples, options)
        except ValueError as exc:
            raise APIError(400, str(exc), param="language") from exc
        return PreparedTranscription(handle, job, p)

    async def _translator(self, asked: str | None,
                          english_only: TranscriptionModelHandle) -> TranscriptionModelHandle:
        """A multilingual model for a translation that named no particular model (none, or
        the generic `whisper-1` every OpenAI client sends); else the English-only one's 400."""
        if asked is None or asked in GENERIC_NAMES:
            # listed() checks files (and once the Hub): off the event loop
            for spec in await run_in_threadpool(self.registry.listed):
                if spec.kind == "transcription" and spec.id != english_only.spec.id:
                    other = await self.engine.transcription_model(spec)
                    if other.is_multilingual:
                        return other
        raise APIError(400, f"model {english_only.spec.id!r} is English-only and cannot "
                       "translate", param="model", code="model_not_supported")

    async def start(self, prep: PreparedTranscription) -> TranscriptionRun:
        """Submit and wait for admission, so a refusal is a plain HTTP error (before 200)."""
        task_id, stream = self.engine.submit_transcription(prep.job, prep.handle.spec.id)
        run = TranscriptionRun(task_id, stream)
        try:
            event = await stream.get()
            if isinstance(event, Failed):
                raise failure_error(event)
            assert isinstance(event, Admitted)
        except BaseException:
            self._abort_unfinished(run)
            raise
        return run

    def _abort_unfinished(self, run: TranscriptionRun) -> None:
        if not run.stream.closed:
            self.engine.abort_transcription(run.task_id)

    async def complete(self, run: TranscriptionRun) -> TranscriptionResult:
        try:
            async for event in run.stream:
                if isinstance(event, TranscriptDone):
                    return event.result
                if isinstance(event, Failed):
                    raise failure_error(event)
            raise APIError(500, "transcription ended without a result")
        finally:  # a cancelled (disconnected) request stops transcribing
            self._abort_unfinished(run)

    async def stream(self, run: TranscriptionRun) -> AsyncIterator[bytes]:
        """OpenAI's streaming shape: transcript.text.delta events, then transcript.text.done."""
        emitted = False
        held = ""  # trailing whitespace waits: the final text is stripped at both ends
        try:
            async for event in run.stream:
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
                    yield sse_data({"type": "error", **failure_event(event)})
                    return
        finally:
            self._abort_unfinished(run)


def usage_json(result: TranscriptionResult) -> dict[str, Any]:
    # OpenAI bills whisper-1 by duration; report the same shape.
    return {"type": "duration", "seconds": round(float(result.duration), 3)}
