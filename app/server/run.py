"""Run the app under uvicorn with mlxd's connection limits and its own shutdown.

On SIGTERM or SIGINT the server stops accepting, lets in-flight requests run for
`drain_seconds`, then ends whatever is still running through the engine (streams get
a final error event and `[DONE]`, named sessions keep their KV), persists the caches in
the lifespan's shutdown and returns, so the process exits 0. uvicorn alone re-raises the
signal after its own shutdown (exit 143) and cuts streams without a final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable, Generator
from functools import partial
from types import FrameType

import uvicorn

from app.server.connection import ConnectionLimits, LimitedH11Protocol
from app.server.throttle import Throttle
from app.settings import Settings

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
FINAL_EVENT_GRACE_SECONDS = 5.0
"""After the drain deadline: time for ended streams to send their last events."""
SHUTDOWN_MESSAGE = "server is shutting down"


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float,
                 end_in_flight: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.end_in_flight = end_in_flight

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
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

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        deadline = asyncio.get_running_loop().call_later(self.drain_seconds,
                                                         self._end_in_flight)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def _end_in_flight(self) -> None:
        if self.server_state.tasks:
            logger.warning("drain timeout: ending %d request(s) still in flight",
                           len(self.server_state.tasks))
        self.end_in_flight()


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

    def end_in_flight() -> None:
        engine = getattr(app.state, "engine", None)
        if engine is not None:
            engine.end_all(SHUTDOWN_MESSAGE)

    DrainingServer(config, settings.drain_seconds, end_in_flight).run()
    engine = getattr(app.state, "engine", None)
    if engine is not None and engine.fatal:
        logger.critical("mlxd stopped: %s", engine.fatal)
        raise SystemExit(1)
