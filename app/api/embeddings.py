"""POST /v1/embeddings (thin: the work is app/serving/embeddings.py's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import guard, respond
from app.protocol.embeddings import EmbeddingRequest
from app.serving.embeddings import EmbeddingService

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    service: EmbeddingService = request.app.state.embeddings
    return respond(await service.handle(body, guard(request)))
