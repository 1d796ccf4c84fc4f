"""RequestStream: events from the engine thread to one asyncio consumer.

The engine never blocks on a slow client: pushes are scheduled onto the event loop
and consecutive text deltas are merged, so the buffer holds at most one delta plus
the final event however far the consumer falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from app.engine.request import FINAL_EVENTS, Delta, Event


class RequestStream:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: deque[Event] = deque()
        self._ready = asyncio.Event()
        self.closed = False

    # -- engine thread side -------------------------------------------------
    def put_threadsafe(self, event: Event) -> None:
        # RuntimeError: the loop is gone (shutdown), nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._put, event)

    # -- event loop side ----------------------------------------------------
    def _put(self, event: Event) -> None:
        if self.closed:
            return
        last = self._events[-1] if self._events else None
        if isinstance(event, Delta) and isinstance(last, Delta):
            last.merge(event)
        else:
            self._events.append(event)
        if isinstance(event, FINAL_EVENTS):
            self.closed = True
        self._ready.set()

    async def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or None if `timeout` seconds pass first (for keepalives)."""
        while not self._events:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return self._events.popleft()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.get()
            assert event is not None
            yield event
            if isinstance(event, FINAL_EVENTS):
                return
