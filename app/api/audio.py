"""POST /v1/audio/transcriptions and /v1/audio/translations (thin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from app.api.deps import guard, respond
from app.protocol.errors import APIError
from app.protocol.transcription import TranscriptionParams
from app.serving.transcribe import TranscriptionService

router = APIRouter()
MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries around the file itself
READ_CHUNK = 1 << 20


async def _read_limited(request: Request, file: UploadFile) -> bytes:
    limit: int = request.app.state.settings.max_audio_bytes
    declared = int(request.headers.get("content-length") or 0)
    too_big = APIError(413, f"audio file is larger than the {limit} byte limit", param="file",
                       code="file_too_large")
    if declared > limit + MULTIPART_OVERHEAD:
        raise too_big
    data = bytearray()
    while chunk := await file.read(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise too_big
    return bytes(data)


async def _handle(request: Request, file: UploadFile, params: TranscriptionParams) -> Response:
    service: TranscriptionService = request.app.state.transcribe
    audio = await _read_limited(request, file)
    return respond(await service.handle(audio, params, guard(request)))


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float | None, Form()] = None,
    timestamp_granularities: Annotated[list[str] | None,
                                       Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    params = TranscriptionParams(model, language, prompt, response_format, temperature,
                                 timestamp_granularities or [], stream)
    return await _handle(request, file, params)


@router.post("/v1/audio/translations", response_model=None)
async def translations(
    request: Request,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float | None, Form()] = None,
) -> Response:
    params = TranscriptionParams(model, None, prompt, response_format, temperature,
                                 task="translate")
    return await _handle(request, file, params)
