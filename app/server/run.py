"""Run the app under uvicorn with mlxd's connection limits and its own shutdown.

On SIGTERM or SIGINT the server stops accepting, lets in-flight requests run for
`drain_seconds`, then ends whatever is still running through the engine (streams get
a final error event and `[DONE]`, named sessions keep their KV), persists the caches in
the lifespan's shutdown and returns, so the process exits 0. uvicorn alone re-raises the
signal after its own shutdown (exit 143) and cuts streams without a final event.
Streams the engine thread has not ended ENGINE_ANSWER_SECONDS after that are ended from
the event loop, so a stuck engine cannot cut them either.

Under tensor parallelism the launcher sends rank 0 PEER_LOST_SIGNAL when another rank
exits: rank 0 ends every stream at once with that reason and stops (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Generator
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from app.engine.engine import SHUTDOWN_MESSAGE
from app.engine.tp.group import launched
from app.server.connection import ConnectionLimits, LimitedH11Protocol
from app.server.throttle import Throttle
from app.server.tp_launch import PEER_LOST_SIGNAL
from app.settings import Settings

if TYPE_CHECKING:
    from app.engine.engine import Engine

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
PEER_LOST_MESSAGE = "tensor-parallel group lost: another rank exited"
FINAL_EVENT_GRACE_SECONDS = 5.0
"""After the drain deadline: time for ended streams to send their last events."""
ENGINE_ANSWER_SECONDS = 2.0
"""After the drain deadline: how long the engine thread has to end the streams itself
(it writes their KV) before they are ended without it."""


class InFlight:
    """The requests the server is answering, as the shutdown sees them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def engine(self) -> Engine | None:
        return getattr(self.app.state, "engine", None)

    def end(self) -> None:
        """Through the engine thread: the requests end, their KV kept."""
        if self.engine is not None:
            self.engine.end_all(SHUTDOWN_MESSAGE)

    def end_now(self) -> None:
        """On the event loop: whatever the engine has not ended yet."""
        engine = self.engine
        if engine is not None and engine.end_open_now(SHUTDOWN_MESSAGE, code="shutdown",
                                                      status=503):
            logger.warning("the engine thread did not end every stream in time: ended "
                           "them without it")

    def peer_lost(self) -> None:
        if self.engine is not None:
            self.engine.peer_lost(PEER_LOST_MESSAGE)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float,
                 in_flight: InFlight, *, tensor_parallel: bool = False) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.in_flight = in_flight
        self.tensor_parallel = tensor_parallel
        """Rank 0 of a group started by the launcher: PEER_LOST_SIGNAL is its word."""
        self.peer_lost = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        if self.tensor_parallel:
            previous[PEER_LOST_SIGNAL] = signal.signal(PEER_LOST_SIGNAL,
                                                       self.handle_peer_lost)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        elif not self.should_exit:
            logger.info("%s: draining (up to %g s)", signal.Signals(sig).name,
                        self.drain_seconds)
            self.should_exit = True

    def handle_peer_lost(self, sig: int, frame: FrameType | None) -> None:
        # Between bytecodes of the loop's thread: the work itself goes through the loop.
        if self.peer_lost:
            return  # told already
        self.peer_lost = True
        logger.critical("%s: ending every request and stopping the server",
                        PEER_LOST_MESSAGE)
        asyncio.get_event_loop().call_soon_threadsafe(self.in_flight.peer_lost)
        self.drain_seconds = 0.0
        self.should_exit = True

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        loop = asyncio.get_running_loop()
        deadlines = [loop.call_later(self.drain_seconds, self._end_in_flight),
                     loop.call_later(self.drain_seconds + ENGINE_ANSWER_SECONDS,
                                     self.in_flight.end_now)]
        try:
            await super().shutdown(sockets)
        finally:
            for deadline in deadlines:
                deadline.cancel()

    def _end_in_flight(self) -> None:
        if self.server_state.tasks:
            logger.warning("drain timeout: ending %d request(s) still in flight",
                           len(self.server_state.tasks))
        self.in_flight.end()


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard one: every connection is a descriptor,
    and the usual soft default (1,024) is far below what a server is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(settings: Settings) -> None:
    from app.main import create_app

    raise_fd_limit()
    logging.getLogger("asyncio").addFilter(Throttle())  # accept() errors under a flood
    app = create_app(settings)
    limits = ConnectionLimits(settings.header_timeout_seconds, settings.body_timeout_seconds,
                              settings.max_connections)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        http=partial(LimitedH11Protocol, limits=limits),  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(settings.drain_seconds + FINAL_EVENT_GRACE_SECONDS))

    DrainingServer(config, settings.drain_seconds, InFlight(app),
                   tensor_parallel=launched()).run()
    engine = getattr(app.state, "engine", None)
    if engine is not None and engine.fatal:
        logger.critical("mlxd stopped: %s", engine.fatal)
        raise SystemExit(1)
