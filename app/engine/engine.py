"""The engine: one thread that owns every MLX object.

Async code talks to it only through `call()` (run a function on the engine thread
and await its result) and `submit()`/`abort()`; results come back through
RequestStreams. Between commands the thread runs scheduler steps for every model
that has work, so all streams of a model decode together. Loading and unloading
models is the model manager's (models.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import mlx.core as mx
import numpy as np

from app.engine.asr import AsrTask
from app.engine.embed import EmbedTask
from app.engine.kv_bridge import AdmissionRefused, RequestTooLarge
from app.engine.memory import IdleRelease
from app.engine.models import (
    ChatModelHandle,
    EmbeddingModelHandle,
    ModelManager,
    TranscriptionModelHandle,
)
from app.engine.request import Admitted, Failed, GenerationRequest
from app.engine.runner import ChatRunner
from app.engine.sampling import RowSampler
from app.engine.sequence import Sequence
from app.engine.stream import Dispatcher, RequestStream
from app.engine.tp.errors import GroupLost
from app.engine.tp.group import join_group
from app.kv.records import SessionInfo, StoreStats
from app.metrics import Metrics
from app.models.registry import ModelSpec, Registry
from app.models.whisper.transcribe import TranscriptionJob
from app.settings import Settings
from app.text.detokenize import IncrementalDetokenizer
from app.text.stops import StopMatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")
IDLE_WAIT_SECONDS = 0.5  # how long an idle engine blocks on its queue before housekeeping
RETRY_AFTER_SECONDS = 2  # suggested wait when the KV budget or the queue refuses a request
SHUTDOWN_MESSAGE = "server is shutting down"


class EngineStopped(RuntimeError):
    pass


class Engine:
    def __init__(self, settings: Settings, registry: Registry,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.models = ModelManager(settings, registry, self.metrics, join_group())
        self.fatal: str | None = None
        """Why the engine stopped on its own (a tensor-parallel rank was lost)."""
        # Commands run for their effect; whatever they return is ignored.
        self._commands: queue.Queue[Callable[[], object]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dispatcher: Dispatcher | None = None
        self._release = IdleRelease()

    # -- lifecycle ------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._dispatcher = Dispatcher(loop)
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = None
            return
        done = threading.Event()

        def shutdown() -> None:
            try:
                self.models.shutdown(SHUTDOWN_MESSAGE)
                self.models.stop_group()
            finally:
                self._stopping = True
                done.set()

        self._commands.put(shutdown)
        done.wait(timeout)
        self._thread.join(timeout)
        self._thread = None

    # -- async API (event loop side) -------------------------------------------
    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread and await its result."""
        if self._thread is None or self._stopping:
            raise EngineStopped("engine is not running")
        fut: Future[T] = Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:  # delivered to the awaiting coroutine
                fut.set_exception(exc)

        self._commands.put(run)
        return await asyncio.wrap_future(fut)

    def loaded_chat(self, model_id: str) -> ChatModelHandle | None:
        return self.models.chat_handle(model_id)

    async def chat_model(self, spec: ModelSpec) -> ChatModelHandle:
        handle = self.models.chat_handle(spec.id)
        if handle is None:
            handle = await self.call(lambda: self.models.ensure_chat(spec))
        return handle

    def submit(self, req: GenerationRequest) -> RequestStream:
        """Queue a generation; events arrive on the returned stream."""
        assert self._dispatcher is not None
        stream = RequestStream(self._dispatcher)
        self._commands.put(lambda: self._admit(req, stream))
        return stream

    def abort(self, request_id: int) -> None:
        self._commands.put(lambda: self._abort(request_id))

    def end_all(self, message: str) -> None:
        """End every request in flight with `message` (the drain timeout of a shutdown);
        their KV stays in the store. Safe from any thread."""
        self._commands.put(lambda: self.models.end_requests(message))

    def end_open_now(self, message: str, *, code: str | None = None,
                     status: int = 500) -> int:
        """Event loop side: end every stream still open with `message` without waiting
        for the engine thread (the fallback when it does not answer end_all in time)."""
        if self._dispatcher is None:
            return 0
        return self._dispatcher.end_open(Failed(message, code=code, status=status))

    def peer_lost(self, message: str) -> None:
        """Event loop side: the launcher saw another tensor-parallel rank exit. Nothing
        can be served without its shard: no collective is issued any more, every stream
        ends now with `message` (the engine thread may be waiting in a collective that
        never completes), and the server stops with exit status 1."""
        self.fatal = self.fatal or message
        if self.models.tp is not None:
            self.models.tp.lost = self.models.tp.lost or message
        self.end_open_now(f"server stopped: {message}", code="tensor_parallel_group_lost",
                          status=503)

    async def transcription_model(self, spec: ModelSpec) -> TranscriptionModelHandle:
        handle = self.models.transcription_handle(spec.id)
        if handle is None:
            handle = await self.call(lambda: self.models.ensure_transcription(spec))
        return handle

    def submit_transcription(self, job: TranscriptionJob,
                             model_id: str) -> tuple[int, RequestStream]:
        """Queue a prepared job; segments and the result arrive on the stream."""
        assert self._dispatcher is not None
        task = AsrTask(job, RequestStream(self._dispatcher), model=model_id)

        def add() -> None:
            self.models.touch(model_id)
            self.models.asr.add(task)

        self._commands.put(add)
        return task.id, task.stream

    def abort_transcription(self, task_id: int) -> None:
        self._commands.put(lambda: self.models.asr.abort(task_id))

    async def embedding_model(self, spec: ModelSpec) -> EmbeddingModelHandle:
        handle = self.models.embedding_handle(spec.id)
        if handle is None:
            handle = await self.call(lambda: self.models.ensure_embedding(spec))
        return handle

    async def embed(self, spec: ModelSpec, rows: list[list[int]]) -> np.ndarray:
        """Sentence vectors [len(rows), D] of token lists (batched with other requests);
        cancelling the await drops the rows not yet embedded."""
        if self._thread is None or self._stopping:
            raise EngineStopped("engine is not running")
        fut: Future[np.ndarray] = Future()

        def add() -> None:
            try:
                loaded = self.models.embedder(spec)[1]
            except Exception as exc:  # reaches the awaiting request
                if not fut.cancelled():
                    fut.set_exception(exc)
                return
            self.metrics.embedded(spec.id, rows)
            self.models.embed.add(EmbedTask(loaded, rows, fut))

        self._commands.put(add)
        return await asyncio.wrap_future(fut)

    # -- engine thread ----------------------------------------------------------
    def _run(self) -> None:
        logger.info("engine thread started on %s", mx.default_device())
        asr = self.models.asr
        while not self._stopping:
            try:
                if self._has_work():
                    self._release.busy()
                    self._drain(block=False)
                elif not self._drain(block=True):
                    self._release.idle()  # a whole IDLE_WAIT_SECONDS with nothing to do
                chat_waiting = False
                for runner in list(self.models.runners.values()):
                    if runner.has_work:
                        runner.step()
                        chat_waiting = chat_waiting or runner.has_work
                if self.models.embed.has_work:
                    self.models.embed.step(chat_waiting)
                if asr.has_work:
                    asr.step(chat_waiting)
                elif self.settings.model_idle_ttl_seconds is not None:
                    self.models.unload_idle(self.settings.model_idle_ttl_seconds)
                self.models.heartbeat()
            except GroupLost as exc:
                self._group_lost(exc)
            except Exception:  # the engine thread must survive anything one step does
                logger.exception("engine step failed")
                time.sleep(0.01)
            finally:
                assert self._dispatcher is not None
                self._dispatcher.flush()
                self._publish_state()
        logger.info("engine thread stopped")

    def _group_lost(self, exc: GroupLost) -> None:
        """Another rank is gone: this rank holds only its shard, so nothing can be served.
        End every request with the reason and stop the server (exit status 1)."""
        logger.critical("%s; ending every request and stopping the server", exc)
        self.fatal = str(exc)
        self._stopping = True
        try:
            self.models.end_requests(f"server stopped: {exc}", keep_kv=False)
        except Exception:
            logger.exception("ending requests after the group was lost failed")
        assert self._dispatcher is not None
        self._dispatcher.flush()
        os.kill(os.getpid(), signal.SIGTERM)  # the server's own drain and shutdown

    def _publish_state(self) -> None:
        """Queues, KV and MLX memory for /metrics, once per loop turn (a few counters)."""
        try:
            self.metrics.publish(self.models.state())
        except Exception:  # metrics must never stop the engine
            logger.exception("publishing engine state failed")

    def _has_work(self) -> bool:
        return self.models.asr.has_work or self.models.embed.has_work or \
            any(r.has_work for r in self.models.runners.values())

    def _drain(self, block: bool) -> bool:
        """Run the queued commands; False when there were none."""
        try:
            cmd = (self._commands.get(timeout=IDLE_WAIT_SECONDS) if block
                   else self._commands.get_nowait())
        except queue.Empty:
            return False
        while True:
            try:
                cmd()
            except Exception:
                logger.exception("engine command failed")
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _admit(self, req: GenerationRequest, stream: RequestStream) -> None:
        runner = self.models.runner_for(req.model_id)
        if runner is None:
            stream.put_threadsafe(Failed(f"model {req.model_id!r} is not loaded", status=503))
            return
        if len(runner.scheduler.waiting) >= self.settings.max_queued_requests:
            stream.put_threadsafe(Failed(
                f"too many requests waiting ({self.settings.max_queued_requests}); retry "
                "shortly", code="queue_full", status=503, retry_after=RETRY_AFTER_SECONDS))
            return
        tok = runner.loaded.tokenizer
        # MLX does not bounds-check gathers on the CPU: a bad id would crash the process.
        if not req.prompt_tokens or min(req.prompt_tokens) < 0 or \
                max(req.prompt_tokens) >= tok.vocab_size:
            stream.put_threadsafe(Failed("prompt is empty or has token ids outside the "
                                         "vocabulary", type="invalid_request_error",
                                         status=400))
            return
        try:
            sampler = RowSampler.create(req.sampling, req.prompt_tokens, req.constraint)
        except Exception as exc:
            stream.put_threadsafe(Failed(f"invalid sampling parameters: {exc}",
                                         type="invalid_request_error", status=400))
            return
        seq = Sequence(
            req=req, stream=stream, sampler=sampler,
            detok=IncrementalDetokenizer(tok.decode), stops=StopMatcher(req.stop),
            eos_ids=set(tok.eos_token_ids), context_length=runner.loaded.context_length,
        )
        if runner.kv is not None:
            runner.settle()
            try:
                runner.kv.admit(seq)
            except RequestTooLarge as exc:
                stream.put_threadsafe(Failed(str(exc), type="invalid_request_error",
                                             code="kv_budget_too_small", status=400))
                return
            except AdmissionRefused as exc:
                stream.put_threadsafe(Failed(str(exc), code="kv_budget_exhausted", status=503,
                                             retry_after=RETRY_AFTER_SECONDS))
                return
        stream.put_threadsafe(Admitted(seq.cached_tokens, seq.cache_info))
        runner.add(seq)

    def _abort(self, request_id: int) -> None:
        for runner in self.models.runners.values():
            if runner.abort(request_id):
                return

    # -- KV session admin (engine thread; reach them through call()) ----------------
    def _settled_kv_runners(self) -> dict[str, ChatRunner]:
        """Runners that keep KV caches, each settled first: a request already answered
        shows up with its whole completion, and is not stored again after a delete."""
        runners = {mid: r for mid, r in self.models.runners.items() if r.kv is not None}
        for runner in runners.values():
            runner.settle()
        return runners

    def cache_sessions(self) -> list[tuple[str, SessionInfo]]:
        """(model id, session) for every named session of every model."""
        return [(mid, info) for mid, runner in self._settled_kv_runners().items()
                if runner.kv is not None for info in runner.kv.store.sessions()]

    def delete_cache_session(self, key: str) -> bool:
        runners = self._settled_kv_runners().values()
        return any([r.kv.store.delete_session(key) for r in runners if r.kv])

    def cache_stats(self) -> dict[str, StoreStats]:
        return {mid: r.kv.store.stats for mid, r in self.models.runners.items() if r.kv}
