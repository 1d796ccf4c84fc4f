"""Admin routes for resident KV caches: list sessions, delete one, stats."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import cache_scope
from app.engine.engine import Engine
from app.protocol.errors import APIError

router = APIRouter(prefix="/v1/cache")


@router.get("/sessions")
async def list_sessions(request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    scope = cache_scope(request)
    sessions = await engine.call(engine.cache_sessions)
    return {"object": "list", "data": [
        {"model": mid, "session": scope.public(info.key), "tokens": info.tokens,
         "bytes": info.bytes, "resident": info.resident, "on_disk": info.on_disk,
         "last_used": info.last_used}
        for mid, info in sessions if scope.owns(info.key)]}


@router.delete("/sessions/{key:path}")
async def delete_session(key: str, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    internal = cache_scope(request).key(key)
    assert internal is not None
    if not await engine.call(lambda: engine.delete_cache_session(internal)):
        raise APIError(404, f"no cached session {key!r}", param="key", code="session_not_found")
    return {"id": key, "object": "cache.session", "deleted": True}


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    return {mid: asdict(s) for mid, s in (await engine.call(engine.cache_stats)).items()}
