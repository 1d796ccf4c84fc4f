"""`x-request-id` on every response (the client's own when it sent one, else a new id),
and one log line per request that carries it: SDK errors quote the id, the log finds it.

The line is key=value pairs, written when the response ends (streams included):
`request_id=req_.. method=POST route=/v1/chat/completions path=/v1/chat/completions
status=200 ttfb=0.012 duration=1.840 complete=true client=127.0.0.1:50312`. The same
place counts the request for /metrics, by route template (never the raw path).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import UNMATCHED_ROUTE, Metrics

logger = logging.getLogger(__name__)

HEADER = b"x-request-id"
# A client's id is echoed only when it is short and plain: it lands in headers and logs.
CLIENT_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Log values outside this set are JSON-quoted: a path can hold spaces, quotes, newlines.
PLAIN_VALUE = re.compile(r"^[A-Za-z0-9._:/@%+,~{}-]*$")
MAX_PATH_CHARS = 200
# Status logged and counted when the app raised before starting a response (Starlette's
# outer ServerErrorMiddleware answers 500 then).
NO_RESPONSE_STATUS = 500


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
        status, first_byte, complete = NO_RESPONSE_STATUS, None, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, first_byte, complete
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((HEADER, request_id))
                message = {**message, "headers": headers}
                status, first_byte = message["status"], time.perf_counter() - started
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            route = route_template(scope)
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None) \
                if "app" in scope else None
            if metrics is not None:
                metrics.request(route, status, duration)
            client = scope.get("client")
            logger.info("%s", log_line(
                request_id=request_id.decode(), method=scope["method"], route=route,
                path=scope["path"][:MAX_PATH_CHARS], status=status,
                ttfb=None if first_byte is None else f"{first_byte:.3f}",
                duration=f"{duration:.3f}", complete=str(complete).lower(),
                client=f"{client[0]}:{client[1]}" if client else None))


def route_template(scope: Scope) -> str:
    """The matched route's path template ("/v1/models/{model_id}"), for bounded labels.
    Requests answered before routing (refused by a middleware) are matched here."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE and isinstance(getattr(route, "path", None), str):
            return str(route.path)
    return UNMATCHED_ROUTE


def log_line(**fields: object) -> str:
    """`key=value` pairs; None values are left out, odd ones JSON-quoted."""
    out = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        out.append(f"{key}={text if PLAIN_VALUE.match(text) else json.dumps(text)}")
    return " ".join(out)
