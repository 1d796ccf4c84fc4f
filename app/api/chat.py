"""POST /v1/chat/completions (thin: validation lives in serving/chat.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.deps import until_disconnect
from app.api.schemas import ChatCompletionRequest
from app.api.sse import SSE_HEADERS
from app.serving.chat import ChatService

router = APIRouter()
SESSION_HEADER = "x-session-id"


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service: ChatService = request.app.state.chat
    prepared = await service.prepare(body, request.headers.get(SESSION_HEADER))
    if body.stream:
        return StreamingResponse(service.stream(prepared), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    return await until_disconnect(request, service.complete(prepared))
