"""RequestStream: events from the engine thread to one asyncio consumer.

The engine never blocks on a slow client: events are handed to the event loop and
consecutive text deltas are merged, so the buffer holds at most one delta plus the
final event however far the consumer falls behind. The engine thread posts events
into a Dispatcher and flushes it once per engine iteration: one wake-up of the event
loop per step instead of one per stream (that cost grows with the batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterator

from app.engine.request import FINAL_EVENTS, Delta, Event


class Dispatcher:
    """Buffers (stream, event) pairs on the engine thread; flush() hands them to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[tuple[RequestStream, Event]] = []
        self._open: weakref.WeakSet[RequestStream] = weakref.WeakSet()
        """Streams made on the event loop, for end_open() (weak: a consumer that went
        away drops its stream)."""

    def post(self, stream: RequestStream, event: Event) -> None:
        self._pending.append((stream, event))

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        # RuntimeError: the loop is gone (shutdown), nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_deliver, batch)

    def track(self, stream: RequestStream) -> None:
        """Event loop side (where streams are made): remember `stream` for end_open()."""
        self._open.add(stream)

    def end_open(self, event: Event) -> int:
        """Event loop side: give every stream without its final event `event` now,
        without the engine thread (it may be stuck, e.g. in a collective whose peer is
        gone). Events the engine posts later are dropped. Returns how many it ended."""
        ended = 0
        for stream in list(self._open):
            if not stream.closed:
                stream._put(event)
                ended += 1
        return ended


def _deliver(batch: list[tuple[RequestStream, Event]]) -> None:
    for stream, event in batch:
        stream._put(event)


class RequestStream:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        dispatcher.track(self)
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        """The consumer's future while it waits for an event."""
        self._deadline: float | None = None
        """loop.time() when the waiting consumer gets None instead (its keepalive)."""
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- engine thread side -------------------------------------------------
    def put_threadsafe(self, event: Event) -> None:
        """Queue an event; it reaches the consumer at the engine's next flush."""
        self._dispatcher.post(self, event)

    def flush(self) -> None:
        """Send everything posted so far now (engine thread), e.g. a first token before
        the batch bookkeeping that follows it."""
        self._dispatcher.flush()

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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or None if `timeout` seconds pass first (for keepalives)."""
        if not self._events:
            # A bare future, not wait_for() (a task per call), and one timer per stream
            # that is moved on when it fires, not one per call: this runs once per token
            # of every stream.
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            self._deadline = None if timeout is None else loop.time() + timeout
            if self._deadline is not None and (self._timer is None
                                               or self._timer.when() > self._deadline):
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(self._deadline, self._expire)
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._events:
                return None  # the timeout
        return self._events.popleft()

    def _expire(self) -> None:
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # no one waits with a timeout: the next get() arms a timer
        loop = waiter.get_loop()
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._expire)
        else:
            waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.get()
            assert event is not None
            yield event
            if isinstance(event, FINAL_EVENTS):
                return
