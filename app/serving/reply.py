"""What a serving call hands its route: a whole body or an event stream, with headers.

Routes turn a `Reply` into a Starlette response (app/api/respond.py); a `Guard` is how
they let serving await engine work that a client disconnect must cancel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from app.engine.request import Failed
from app.protocol.errors import APIError

T = TypeVar("T")
JSON_MEDIA = "application/json"


@dataclass(slots=True)
class Complete:
    body: dict[str, Any] | str | bytes
    """A JSON document, or a body already rendered in `media_type`."""
    media_type: str = JSON_MEDIA
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Streamed:
    events: AsyncIterator[bytes]
    """Server-sent events, framed (app/protocol/sse.py)."""
    headers: dict[str, str] = field(default_factory=dict)


Reply = Complete | Streamed


class Guard(Protocol):
    """Awaits `work`, cancelling it if the client goes away (then raises APIError 499)."""

    def __call__(self, work: Awaitable[T], /) -> Awaitable[T]: ...


def failure_error(event: Failed) -> APIError:
    """An engine failure before the first byte, as the HTTP error it becomes."""
    headers = {"Retry-After": str(event.retry_after)} if event.retry_after else None
    return APIError(event.status, event.message, type=event.type, code=event.code,
                    headers=headers)


def failure_event(event: Failed) -> dict[str, Any]:
    """An engine failure after the first byte: the error envelope, sent in-band."""
    return {"error": {"message": event.message, "type": event.type, "param": None,
                      "code": event.code}}
