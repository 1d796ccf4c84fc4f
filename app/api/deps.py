"""Request-scoped helpers shared by routes: the disconnect guard, Reply -> Response."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.protocol.errors import APIError
from app.serving.reply import Complete, Guard, Reply
from app.serving.tenancy import CacheScope

T = TypeVar("T")
# Starlette's status for "client closed request" has no name; nginx uses 499.
CLIENT_CLOSED = 499
SSE_MEDIA = "text/event-stream"


async def _wait_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it as soon as the client goes away (non-streaming)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise APIError(CLIENT_CLOSED, "client disconnected")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class _DisconnectGuard:
    def __init__(self, request: Request) -> None:
        self.request = request

    def __call__(self, work: Awaitable[T], /) -> Awaitable[T]:
        return until_disconnect(self.request, work)


def guard(request: Request) -> Guard:
    """The serving layer's Guard for this request's connection."""
    return _DisconnectGuard(request)


def cache_scope(request: Request) -> CacheScope:
    """The caller's tenant (set by app/api/security.py when API keys are on)."""
    return CacheScope(getattr(request.state, "tenant", None))


def respond(reply: Reply) -> Response:
    if not isinstance(reply, Complete):
        return StreamingResponse(reply.events, media_type=SSE_MEDIA, headers=reply.headers)
    if isinstance(reply.body, dict):
        return JSONResponse(reply.body, headers=reply.headers)
    return Response(reply.body, media_type=reply.media_type, headers=reply.headers)
