"""The engine: one thread that owns every MLX object.

Async code talks to it only through `call()` (run a function on the engine thread
and await its result) and `submit()`/`abort()`; results come back through
RequestStreams. Between commands the thread runs scheduler steps for every model
that has work, so all streams of a model decode together.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import mlx.core as mx

from app.engine import forward
from app.engine.asr import AsrQueue, AsrTask
from app.engine.kv_bridge import AdmissionRefused, KVBridge, measure_kv_bytes_per_token
from app.engine.request import Admitted, Failed, GenerationRequest
from app.engine.runner import ChatRunner
from app.engine.sampling import RowSampler
from app.engine.scheduler import Scheduler
from app.engine.sequence import Sequence
from app.engine.stream import Dispatcher, RequestStream
from app.kv.sizing import default_budget_bytes
from app.kv.store import KVStore
from app.models import cpu_kernels
from app.models.cpu_llama import CpuLlamaDecoder
from app.models.gguf import on_cpu
from app.models.registry import ModelSpec, Registry, resolve_parts, resolve_source
from app.models.types import LoadedChatModel, TextTokenizer
from app.settings import Settings
from app.text.detokenize import IncrementalDetokenizer
from app.text.stops import StopMatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")
IDLE_WAIT_SECONDS = 0.5  # how long an idle engine blocks on its queue before housekeeping
RETRY_AFTER_SECONDS = 2  # suggested wait when the KV budget refuses a request
UNLOAD_CHECK_SECONDS = 1.0  # how often an idle engine looks for models past their TTL


@dataclass(slots=True)
class ChatModelHandle:
    """What the serving layer may know of a loaded chat model (no MLX arrays)."""

    spec: ModelSpec
    tokenizer: TextTokenizer
    context_length: int
    fingerprint: str
    dtype: str


@dataclass(slots=True)
class TranscriptionModelHandle:
    """A loaded Whisper model, passed back to the engine to build jobs (opaque outside)."""

    spec: ModelSpec
    bundle: Any
    is_multilingual: bool


class EngineStopped(RuntimeError):
    pass


def load_chat_model(spec: ModelSpec, settings: Settings) -> LoadedChatModel:
    path = resolve_source(spec, offline=settings.hf_offline)
    if settings.cpu_fast_kernels and on_cpu():
        cpu_kernels.install()
    if path.suffix == ".gguf":
        from app.models.gguf import load_gguf

        loaded = load_gguf(path, dtype=spec.dtype, context_length=spec.context_length)
    else:
        from app.models.hf import load_hf

        loaded = load_hf(path, dtype=spec.dtype, context_length=spec.context_length)
    if settings.cpu_fast_kernels and on_cpu():
        loaded.cpu_decoder = CpuLlamaDecoder.build(loaded.model)
    return loaded


class Engine:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        # Commands run for their effect; whatever they return is ignored.
        self._commands: queue.Queue[Callable[[], object]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._runners: dict[str, ChatRunner] = {}
        self._handles: dict[str, ChatModelHandle] = {}
        self._asr_models: dict[str, TranscriptionModelHandle] = {}
        self._asr = AsrQueue()
        self._last_used: dict[str, float] = {}
        self._next_unload_check = 0.0
        self._dispatcher: Dispatcher | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._dispatcher = Dispatcher(loop)
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        done = threading.Event()

        def shutdown() -> None:
            self._asr.abort_all("server is shutting down")
            for runner in self._runners.values():
                runner.abort_all("server is shutting down")
                if runner.kv is not None:
                    written = runner.kv.store.persist_all()
                    if written:
                        logger.info("persisted %d session caches of %s", written,
                                    runner.loaded.fingerprint[:12])
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
        return self._handles.get(model_id)

    async def chat_model(self, spec: ModelSpec) -> ChatModelHandle:
        handle = self._handles.get(spec.id)
        if handle is None:
            handle = await self.call(lambda: self._ensure_chat(spec))
        return handle

    def submit(self, req: GenerationRequest) -> RequestStream:
        """Queue a generation; events arrive on the returned stream."""
        assert self._dispatcher is not None
        stream = RequestStream(self._dispatcher)
        self._commands.put(lambda: self._admit(req, stream))
        return stream

    def abort(self, request_id: int) -> None:
        self._commands.put(lambda: self._abort(request_id))

    def loaded_transcription(self, model_id: str) -> TranscriptionModelHandle | None:
        return self._asr_models.get(model_id)

    async def transcription_model(self, spec: ModelSpec) -> TranscriptionModelHandle:
        handle = self._asr_models.get(spec.id)
        if handle is None:
            handle = await self.call(lambda: self._ensure_asr(spec))
        return handle

    def submit_transcription(self, job: Any, model_id: str) -> tuple[int, RequestStream]:
        """Queue a prepared TranscriptionJob; segments and the result arrive on the stream."""
        assert self._dispatcher is not None
        task = AsrTask(job, RequestStream(self._dispatcher))
        def add() -> None:
            self._last_used[model_id] = time.monotonic()
            self._asr.add(task)

        self._commands.put(add)
        return task.id, task.stream

    def abort_transcription(self, task_id: int) -> None:
        self._commands.put(lambda: self._asr.abort(task_id))

    # -- engine thread ----------------------------------------------------------
    def _run(self) -> None:
        logger.info("engine thread started on %s", mx.default_device())
        while not self._stopping:
            try:
                self._drain(block=not self._has_work())
                chat_waiting = False
                for runner in list(self._runners.values()):
                    if runner.has_work:
                        runner.step()
                        chat_waiting = chat_waiting or runner.has_work
                if self._asr.has_work:
                    self._asr.step(chat_waiting)
                elif self.settings.model_idle_ttl_seconds is not None:
                    self._unload_idle(self.settings.model_idle_ttl_seconds)
            except Exception:  # the engine thread must survive anything one step does
                logger.exception("engine step failed")
                time.sleep(0.01)
            finally:
                assert self._dispatcher is not None
                self._dispatcher.flush()
        logger.info("engine thread stopped")

    def _unload_idle(self, ttl: float) -> None:
        """Drop models idle longer than `ttl` (never the default chat model); their named
        KV sessions are written to disk first so they survive the unload."""
        now = time.monotonic()
        if now < self._next_unload_check:
            return
        self._next_unload_check = now + UNLOAD_CHECK_SECONDS
        for mid, runner in list(self._runners.items()):
            if mid == self.registry.default_chat or runner.has_work:
                continue
            if now - self._last_used.get(mid, now) > ttl:
                if runner.kv is not None:
                    runner.kv.store.persist_all()
                    runner.kv.store.clear()
                del self._runners[mid], self._handles[mid]
                logger.info("unloaded chat model %s after %.0fs idle", mid, ttl)
        for mid in list(self._asr_models):
            if not self._asr.has_work and now - self._last_used.get(mid, now) > ttl:
                del self._asr_models[mid]  # queued jobs hold their own reference
                logger.info("unloaded transcription model %s after %.0fs idle", mid, ttl)

    def _has_work(self) -> bool:
        return self._asr.has_work or any(r.has_work for r in self._runners.values())

    def _drain(self, block: bool) -> None:
        try:
            cmd = (self._commands.get(timeout=IDLE_WAIT_SECONDS) if block
                   else self._commands.get_nowait())
        except queue.Empty:
            return
        while True:
            try:
                cmd()
            except Exception:
                logger.exception("engine command failed")
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _ensure_chat(self, spec: ModelSpec) -> ChatModelHandle:
        if spec.id in self._handles:
            return self._handles[spec.id]
        t0 = time.perf_counter()
        loaded = load_chat_model(spec, self.settings)
        try:
            forward.warm_up(loaded.model)
        except Exception:  # a model that can't batch still serves single requests
            logger.warning("warm-up forward failed for %s", spec.id, exc_info=True)
        handle = self.add_chat_model(spec, loaded)
        logger.info("loaded chat model %s (%s, context %d) in %.1fs on %s",
                    spec.id, loaded.dtype, handle.context_length, time.perf_counter() - t0,
                    mx.default_device())
        return handle

    def add_chat_model(self, spec: ModelSpec, loaded: LoadedChatModel) -> ChatModelHandle:
        """Serve an already-loaded model (engine thread; benchmarks build models in memory)."""
        ctx = min(spec.context_length or loaded.context_length, loaded.context_length)
        loaded.context_length = ctx
        scheduler = Scheduler(
            max_batch=self.settings.max_batch,
            idle_chunk=self.settings.prefill_chunk,
            busy_chunk_seconds=self.settings.prefill_busy_seconds,
        )
        kv = self._kv_bridge(spec, loaded) if self.settings.kv_cache else None
        self._runners[spec.id] = ChatRunner(loaded, scheduler, kv)
        handle = ChatModelHandle(spec, loaded.tokenizer, ctx, loaded.fingerprint, loaded.dtype)
        self._handles[spec.id] = handle
        self._last_used[spec.id] = time.monotonic()
        return handle

    def _ensure_asr(self, spec: ModelSpec) -> TranscriptionModelHandle:
        if spec.id in self._asr_models:
            return self._asr_models[spec.id]
        from app.models.whisper import load_whisper

        t0 = time.perf_counter()
        bundle = load_whisper(resolve_source(spec, offline=self.settings.hf_offline),
                              parts=resolve_parts(spec))
        handle = TranscriptionModelHandle(spec, bundle, bool(bundle.is_multilingual))
        self._asr_models[spec.id] = handle
        self._last_used[spec.id] = time.monotonic()
        logger.info("loaded transcription model %s (%s, %s) in %.1fs", spec.id, bundle.format,
                    bundle.dtype, time.perf_counter() - t0)
        return handle

    def _kv_bridge(self, spec: ModelSpec, loaded: LoadedChatModel) -> KVBridge:
        # One budget over all caches of all models; each model has its own store.
        budget = self.settings.kv_budget_bytes or default_budget_bytes()
        persist = None
        if self.settings.kv_dir is not None:
            safe = hashlib.sha256(spec.id.encode()).hexdigest()[:16]
            persist = self.settings.kv_dir / safe
        store = KVStore(budget, loaded.fingerprint, persist)
        per_token = measure_kv_bytes_per_token(loaded.model)
        logger.info("KV cache for %s: %d bytes/token, budget %.0f MiB, persist %s",
                    spec.id, per_token, budget / 2**20, persist)
        return KVBridge(store, per_token)

    def _admit(self, req: GenerationRequest, stream: RequestStream) -> None:
        runner = self._runners.get(req.model_id)
        spec = self.registry.get(req.model_id)
        if runner is None and spec is not None:
            try:  # unloaded (idle TTL) between the route's lookup and now: load again
                self._ensure_chat(spec)
            except Exception:
                logger.exception("reloading %s failed", req.model_id)
            runner = self._runners.get(req.model_id)
        self._last_used[req.model_id] = time.monotonic()
        if runner is None:
            stream.put_threadsafe(Failed(f"model {req.model_id!r} is not loaded", status=503))
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
            sampler = RowSampler.create(req.sampling, req.prompt_tokens)
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
            except AdmissionRefused as exc:
                stream.put_threadsafe(Failed(str(exc), code="kv_budget_exhausted", status=503,
                                             retry_after=RETRY_AFTER_SECONDS))
                return
        stream.put_threadsafe(Admitted(seq.cached_tokens, seq.cache_info))
        runner.add(seq)

    def _abort(self, request_id: int) -> None:
        for runner in self._runners.values():
            if runner.abort(request_id):
                return

    # -- KV session admin (engine thread; reach them through call()) ----------------
    def _settled_kv_runners(self) -> dict[str, ChatRunner]:
        """Runners that keep KV caches, each settled first: a request already answered
        shows up with its whole completion, and is not stored again after a delete."""
        runners = {mid: r for mid, r in self._runners.items() if r.kv is not None}
        for runner in runners.values():
            runner.settle()
        return runners

    def cache_sessions(self) -> list[dict[str, Any]]:
        out = []
        for mid, runner in self._settled_kv_runners().items():
            assert runner.kv is not None
            for info in runner.kv.store.sessions():
                out.append({"model": mid, "session": info.key, "tokens": info.tokens,
                            "bytes": info.bytes, "resident": info.resident,
                            "on_disk": info.on_disk, "last_used": info.last_used})
        return out

    def delete_cache_session(self, key: str) -> bool:
        runners = self._settled_kv_runners().values()
        return any([r.kv.store.delete_session(key) for r in runners if r.kv])

    def cache_stats(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {mid: asdict(r.kv.store.stats) for mid, r in self._runners.items() if r.kv}
