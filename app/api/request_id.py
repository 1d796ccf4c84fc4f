"""`x-request-id` on every response (the client's own when it sent one, else a new id),
and one log line per request that carries it: SDK errors quote the id, the log finds it."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

HEADER = b"x-request-id"
# A client's id is echoed only when it is short and plain: it lands in headers and logs.
CLIENT_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER, b"")
        request_id = given if CLIENT_ID.match(given) else f"req_{uuid.uuid4().hex}".encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((HEADER, request_id))
                message = {**message, "headers": headers}
                logger.info("%s %s %s -> %d in %.3fs (first byte)", request_id.decode(),
                            scope["method"], scope["path"], message["status"],
                            time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, send_with_id)
