"""POST /v1/completions (thin: the work is app/serving/completions.py's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import cache_scope, guard, respond
from app.protocol.completions import CompletionRequest
from app.serving.completions import CompletionService

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    service: CompletionService = request.app.state.completions
    return respond(await service.handle(body, guard(request), cache_scope(request)))
