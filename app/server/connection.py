"""uvicorn's h11 connection with the limits it lacks: a deadline for a request's headers
and one for its body, and a cap on open connections.

uvicorn times out only idle keep-alive connections. A client that sends one header byte
every few seconds (or a body that never ends) holds its socket forever, and a few
thousand such clients use up the process's file descriptors, so normal requests stop
being accepted. Here a connection is closed when its headers or body take longer than
their deadline, and connections past the cap get a 503 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.protocol.errors import error_body
from app.server.throttle import Throttle

logger = logging.getLogger(__name__)
logger.addFilter(Throttle())
BUSY_RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_seconds: float
    body_seconds: float
    max_connections: int


def _busy_response() -> bytes:
    body = json.dumps(error_body("too many open connections; retry shortly", "server_error",
                                 None, "too_many_connections")).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"retry-after: {BUSY_RETRY_AFTER}\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


BUSY = _busy_response()


class LimitedH11Protocol(H11Protocol):
    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: type[h11._state.Sentinel] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            logger.warning("connection limit (%d) reached: refusing new connections",
                           self._limits.max_connections)
            transport.write(BUSY)
            transport.close()
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the deadline of the phase the client is in: sending headers (IDLE until a
        request line and headers are complete) or a body; none while we answer."""
        if self.transport.is_closing():
            return
        phase = self.conn.their_state
        if phase is self._phase:
            return
        self._phase = phase
        self._cancel()
        if phase is h11.IDLE:
            timeout = self._limits.header_seconds
        elif phase is h11.SEND_BODY:
            timeout = self._limits.body_seconds
        else:
            return
        self._deadline = self.loop.call_later(timeout, self._expire, phase)

    def _expire(self, phase: object) -> None:
        self._deadline = None
        if self.conn.their_state is phase and not self.transport.is_closing():
            what = "headers" if phase is h11.IDLE else "body"
            logger.info("closing a connection whose request %s took too long", what)
            self.transport.close()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
