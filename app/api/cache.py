"""Admin routes for resident KV caches: list sessions, delete one, stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.errors import APIError
from app.engine.engine import Engine

router = APIRouter(prefix="/v1/cache")


@router.get("/sessions")
async def list_sessions(request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    return {"object": "list", "data": await engine.call(engine.cache_sessions)}


@router.delete("/sessions/{key:path}")
async def delete_session(key: str, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    if not await engine.call(lambda: engine.delete_cache_session(key)):
        raise APIError(404, f"no cached session {key!r}", param="key", code="session_not_found")
    return {"id": key, "object": "cache.session", "deleted": True}


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    return await engine.call(engine.cache_stats)
