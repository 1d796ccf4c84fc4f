"""/v1/responses: create, retrieve, delete, input items (thin: the work is
app/serving/responses.py's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import cache_scope, guard, respond
from app.protocol.responses import ResponsesRequest
from app.serving.responses import ResponsesService

router = APIRouter()


def _service(request: Request) -> ResponsesService:
    service: ResponsesService = request.app.state.responses
    return service


@router.post("/v1/responses", response_model=None)
async def create(body: ResponsesRequest, request: Request) -> Response:
    return respond(await _service(request).handle(body, guard(request),
                                                  cache_scope(request)))


@router.get("/v1/responses/{response_id}")
async def retrieve(response_id: str, request: Request) -> dict[str, Any]:
    return await _service(request).get(response_id, cache_scope(request))


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: str, request: Request) -> dict[str, Any]:
    return await _service(request).input_items(response_id, cache_scope(request))


@router.delete("/v1/responses/{response_id}")
async def delete(response_id: str, request: Request) -> dict[str, Any]:
    return await _service(request).delete(response_id, cache_scope(request))
