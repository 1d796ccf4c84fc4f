"""POST /v1/chat/completions (thin: validation lives in serving/chat.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.deps import until_disconnect
from app.protocol.chat import ChatCompletionRequest
from app.protocol.sse import SSE_HEADERS
from app.serving.chat import ChatService, PreparedChat

router = APIRouter()
SESSION_HEADER = "x-session-id"
CACHE_HEADER = "x-mlxd-cache"  # "hit; reused=N" or "miss; reason=...; reused=N"


def _headers(prep: PreparedChat) -> dict[str, str]:
    return {CACHE_HEADER: prep.cache_info} if prep.cache_info else {}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest,
                           request: Request) -> JSONResponse | StreamingResponse:
    service: ChatService = request.app.state.chat
    prepared = await service.prepare(body, request.headers.get(SESSION_HEADER))
    streams = await until_disconnect(request, service.start(prepared))
    if body.stream:
        return StreamingResponse(service.stream(prepared, streams),
                                 media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **_headers(prepared)})
    result = await until_disconnect(request, service.complete(prepared, streams))
    return JSONResponse(result, headers=_headers(prepared))
