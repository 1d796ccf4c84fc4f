"""GET /metrics: Prometheus metrics (thin: definitions and collection are app/metrics.py's)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.metrics import Metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
