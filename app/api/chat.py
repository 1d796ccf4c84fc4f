"""POST /v1/chat/completions (thin: validation lives in serving/chat.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import cache_scope, guard, respond
from app.protocol.chat import ChatCompletionRequest
from app.serving.chat import ChatService

router = APIRouter()
SESSION_HEADER = "x-session-id"


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat
    session = request.headers.get(SESSION_HEADER)
    return respond(await service.handle(body, session, guard(request), cache_scope(request)))
