"""The model manager: load, accelerate, warm up, wire the KV store, unload when idle.

Engine thread only (loading builds MLX arrays). The serving layer sees a loaded model
only through its handle (`ChatModelHandle`, `TranscriptionModelHandle`): no MLX arrays.
What a model computes with is decided here, once, by app.accel.choose.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from app.accel.choose import (
    accelerate_chat,
    accelerate_embedding,
    accelerate_whisper,
    cpu_keeps_quantized,
)
from app.engine import forward
from app.engine.asr import AsrQueue
from app.engine.embed import EmbedQueue
from app.engine.kv_bridge import KVBridge, measure_kv_bytes_per_token
from app.engine.runner import ChatRunner
from app.engine.scheduler import Scheduler
from app.engine.tp.channel import Channel
from app.engine.tp.errors import GroupLost
from app.engine.tp.group import TPGroup
from app.engine.tp.journal import Journal, Replica
from app.engine.tp.shard import shard_model
from app.kv.sizing import batch_from_memory, default_budget_bytes
from app.kv.store import KVStore
from app.metrics import EngineState, KVState, Metrics
from app.models.bert import LoadedEmbeddingModel, load_bert
from app.models.bert.tokenizer import EmbeddingTokenizer
from app.models.device import on_cpu
from app.models.registry import ModelSpec, Registry, resolve_parts, resolve_source
from app.models.types import LoadedChatModel, TextTokenizer
from app.models.whisper.load import WhisperBundle, load_whisper
from app.settings import Settings

logger = logging.getLogger(__name__)

CPU_PREFILL_CHUNK = 512
GPU_PREFILL_CHUNK = 4096

UNLOAD_CHECK_SECONDS = 1.0
GGUF_MAGIC = b"GGUF"  # how often an idle engine looks for models past their TTL


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
    """A loaded Whisper model; serving builds jobs from its bundle (run on the engine)."""

    spec: ModelSpec
    bundle: WhisperBundle
    is_multilingual: bool


@dataclass(slots=True)
class EmbeddingModelHandle:
    """A loaded sentence encoder, as serving sees it (tokenizer and limits, no MLX)."""

    spec: ModelSpec
    tokenizer: EmbeddingTokenizer
    dimensions: int
    max_tokens: int


def load_chat_model(spec: ModelSpec, settings: Settings,
                    tp: TPGroup | None = None) -> LoadedChatModel:
    """Read a chat model's weights (this rank's shard of them under tensor parallelism)
    and choose what it computes with."""
    path = resolve_source(spec, offline=settings.hf_offline)
    if path.suffix == ".gguf" or _is_gguf(path):
        from app.models.gguf import load_gguf

        # A sharded model computes with MLX's ops: the CPU's packed-weight kernels and
        # numpy decode steps work on whole layers of one process.
        loaded = load_gguf(path, dtype=spec.dtype, context_length=spec.context_length,
                           cpu_quantized=tp is None and cpu_keeps_quantized(settings))
    else:
        from app.models.hf import load_hf

        loaded = load_hf(path, dtype=spec.dtype, context_length=spec.context_length)
    if tp is not None:
        shard_model(loaded.model, tp)
    accelerate_chat(loaded, settings, whole_layers=tp is None)
    if tp is not None:
        loaded.acceleration += f", tensor-parallel shard {tp.rank + 1} of {tp.size}"
    return loaded


def _is_gguf(path: Path) -> bool:
    """A GGUF file by its magic bytes (Ollama's blobs have no .gguf suffix)."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(len(GGUF_MAGIC)) == GGUF_MAGIC


class ModelsShutDown(RuntimeError):
    """The server stopped before the work was done."""


class ModelManager:
    def __init__(self, settings: Settings, registry: Registry,
                 metrics: Metrics | None = None, tp: TPGroup | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.tp = tp
        """The tensor-parallel group: the default chat model is sharded over it."""
        self._tp_channel = Channel(tp) if tp is not None else None
        if tp is not None and settings.kv_dir is not None:
            raise ValueError("persisted session caches (kv_dir) are not supported under "
                             "tensor parallelism yet: every rank would write its shard")
        self.runners: dict[str, ChatRunner] = {}
        self.asr = AsrQueue(self.metrics)
        self.embed = EmbedQueue()
        self._handles: dict[str, ChatModelHandle] = {}
        self._asr_models: dict[str, TranscriptionModelHandle] = {}
        self._embedders: dict[str, tuple[EmbeddingModelHandle, LoadedEmbeddingModel]] = {}
        self._last_used: dict[str, float] = {}
        self._next_unload_check = 0.0

    # -- lookups (any thread: plain dict reads) ---------------------------------------
    def chat_handle(self, model_id: str) -> ChatModelHandle | None:
        return self._handles.get(model_id)

    def transcription_handle(self, model_id: str) -> TranscriptionModelHandle | None:
        return self._asr_models.get(model_id)

    def embedding_handle(self, model_id: str) -> EmbeddingModelHandle | None:
        entry = self._embedders.get(model_id)
        return None if entry is None else entry[0]

    def loaded(self, model_id: str) -> bool:
        return any(model_id in d for d in (self._handles, self._asr_models, self._embedders))

    def touch(self, model_id: str) -> None:
        self._last_used[model_id] = time.monotonic()

    # -- loading (engine thread) -------------------------------------------------------
    def ensure_chat(self, spec: ModelSpec) -> ChatModelHandle:
        if spec.id in self._handles:
            return self._handles[spec.id]
        t0 = time.perf_counter()
        tp = self._tp_for(spec)
        loaded = load_chat_model(spec, self.settings, tp)
        try:
            forward.warm_up(loaded.model)
        except Exception:  # a model that can't batch still serves single requests
            if tp is not None:
                raise  # every rank must run the same forwards
            logger.warning("warm-up forward failed for %s", spec.id, exc_info=True)
        handle = self.add_chat_model(spec, loaded, tp)
        seconds = time.perf_counter() - t0
        self.metrics.loaded(spec.id, "chat", seconds)
        logger.info("loaded chat model %s (%s, context %d) in %.1fs on %s; computes with %s",
                    spec.id, loaded.dtype, handle.context_length, seconds,
                    mx.default_device(), loaded.acceleration)
        return handle

    def _tp_for(self, spec: ModelSpec) -> TPGroup | None:
        """The group `spec` is sharded over: only the default chat model is (other
        models load on rank 0 alone)."""
        return self.tp if spec.id == self.registry.default_chat else None

    def add_chat_model(self, spec: ModelSpec, loaded: LoadedChatModel,
                       tp: TPGroup | None = None) -> ChatModelHandle:
        """Serve an already-loaded model (benchmarks build models in memory)."""
        ctx = min(spec.context_length or loaded.context_length, loaded.context_length)
        loaded.context_length = ctx
        kv = self._kv_bridge(spec, loaded, tp) if self.settings.kv_cache else None
        max_batch = self.settings.max_batch
        if max_batch is None:
            budget = kv.store.stats.budget_bytes if kv is not None else \
                self.settings.kv_budget_bytes or self._default_budget(tp)
            per_token = kv.bytes_per_token if kv is not None else \
                measure_kv_bytes_per_token(loaded.model)
            max_batch = batch_from_memory(budget, per_token, ctx, not on_cpu())
            logger.info("%s: up to %d sequences a step (from the KV budget)", spec.id,
                        max_batch)
        scheduler = Scheduler(
            max_batch=max_batch,
            idle_chunk=self.settings.prefill_chunk or
            (CPU_PREFILL_CHUNK if on_cpu() else GPU_PREFILL_CHUNK),
            busy_chunk_seconds=self.settings.prefill_busy_seconds,
            idle_chunk_seconds=self.settings.prefill_idle_seconds,
        )
        ops = None
        if tp is not None:
            assert self._tp_channel is not None
            layers_of = kv.layers_of if kv is not None else None
            store_bytes = (lambda: kv.store.total_bytes) if kv is not None else (lambda: 0)
            ops = Journal(loaded.model, loaded.decode_step, layers_of, self._tp_channel,
                          store_bytes) if tp.rank == 0 else \
                Replica(loaded.model, self._tp_channel)
        self.runners[spec.id] = ChatRunner(loaded, scheduler, kv, self.metrics.model(spec.id),
                                           ops)
        handle = ChatModelHandle(spec, loaded.tokenizer, ctx, loaded.fingerprint, loaded.dtype)
        self._handles[spec.id] = handle
        self.touch(spec.id)
        return handle

    def ensure_transcription(self, spec: ModelSpec) -> TranscriptionModelHandle:
        if spec.id in self._asr_models:
            return self._asr_models[spec.id]
        t0 = time.perf_counter()
        bundle = load_whisper(resolve_source(spec, offline=self.settings.hf_offline),
                              parts=resolve_parts(spec))
        ops = accelerate_whisper(bundle.model, self.settings)
        handle = TranscriptionModelHandle(spec, bundle, bool(bundle.is_multilingual))
        self._asr_models[spec.id] = handle
        self.touch(spec.id)
        seconds = time.perf_counter() - t0
        self.metrics.loaded(spec.id, "transcription", seconds)
        logger.info("loaded transcription model %s (%s, %s) in %.1fs; computes with %s",
                    spec.id, bundle.format, bundle.dtype, seconds, ops)
        return handle

    def ensure_embedding(self, spec: ModelSpec) -> EmbeddingModelHandle:
        return self.embedder(spec)[0]

    def embedder(self, spec: ModelSpec) -> tuple[EmbeddingModelHandle, LoadedEmbeddingModel]:
        """The loaded encoder of `spec` (loading it if it is not, or was unloaded)."""
        self.touch(spec.id)
        if spec.id in self._embedders:
            return self._embedders[spec.id]
        t0 = time.perf_counter()
        loaded = load_bert(resolve_source(spec, offline=self.settings.hf_offline), spec.dtype)
        ops = accelerate_embedding(loaded, self.settings)
        handle = EmbeddingModelHandle(spec, loaded.tokenizer, loaded.dimensions,
                                      loaded.max_tokens)
        self._embedders[spec.id] = handle, loaded
        seconds = time.perf_counter() - t0
        self.metrics.loaded(spec.id, "embedding", seconds)
        logger.info("loaded embedding model %s (%s, %d dimensions, %s pooling) in %.1fs; "
                    "computes with %s", spec.id, loaded.dtype, loaded.dimensions,
                    loaded.pooling, seconds, ops)
        return handle, loaded

    def runner_for(self, model_id: str) -> ChatRunner | None:
        """The runner of a chat model, loading it again if it was unloaded (idle TTL)
        between the route's lookup and now."""
        runner = self.runners.get(model_id)
        spec = self.registry.get(model_id)
        if runner is None and spec is not None:
            try:
                self.ensure_chat(spec)
            except Exception:
                logger.exception("reloading %s failed", model_id)
            runner = self.runners.get(model_id)
        self.touch(model_id)
        return runner

    def _default_budget(self, tp: TPGroup | None) -> int:
        # Ring ranks share one host's memory; NCCL ranks each have a GPU of their own.
        share = tp.size if tp is not None and tp.backend == "ring" else 1
        return default_budget_bytes() // share

    def _kv_bridge(self, spec: ModelSpec, loaded: LoadedChatModel,
                   tp: TPGroup | None = None) -> KVBridge:
        # One budget over all caches of all models; each model has its own store. Under
        # tensor parallelism it is each rank's budget: rank 0 holds the largest shard
        # (tp/shard.py), so what it admits fits on every rank.
        budget = self.settings.kv_budget_bytes or self._default_budget(tp)
        persist = None
        if self.settings.kv_dir is not None:
            safe = hashlib.sha256(spec.id.encode()).hexdigest()[:16]
            persist = self.settings.kv_dir / safe
        store = KVStore(budget, loaded.fingerprint, persist)
        per_token = measure_kv_bytes_per_token(loaded.model)
        logger.info("KV cache for %s: %d bytes/token, budget %.0f MiB, persist %s",
                    spec.id, per_token, budget / 2**20, persist)
        return KVBridge(store, per_token)

    def state(self) -> EngineState:
        """Queues, KV stores and MLX memory now, for /metrics (engine thread: it reads MLX's
        allocator and the stores, which nothing else may touch)."""
        kv = {}
        ranks: dict[str, list[tuple[int, ...]]] = {}
        for mid, runner in self.runners.items():
            if isinstance(runner.ops, Journal):
                ranks[mid] = [tuple(f.words()) for f in runner.ops.ranks]
            if runner.kv is not None:
                st = runner.kv.store.stats
                kv[mid] = KVState(st.resident_bytes, st.reserved_bytes, st.budget_bytes,
                                  st.entries, st.lookups, st.hits + st.partial_hits)
        return EngineState(
            waiting={m: len(r.scheduler.waiting) for m, r in self.runners.items()},
            running={m: len(r.scheduler.running) for m, r in self.runners.items()},
            kv=kv, transcription_jobs=self.asr.pending,
            embedding_requests=self.embed.pending,
            mlx_active_bytes=mx.get_active_memory(), mlx_peak_bytes=mx.get_peak_memory(),
            mlx_cache_bytes=mx.get_cache_memory(), tp_ranks=ranks)

    def heartbeat(self) -> None:
        """Under tensor parallelism: send rank 0's pending cache operations and hear
        from every rank (raises GroupLost when one is gone)."""
        for runner in self.runners.values():
            if isinstance(runner.ops, Journal):
                runner.ops.heartbeat()

    def stop_group(self) -> None:
        """Tell the other ranks to exit (the server is stopping)."""
        for runner in self.runners.values():
            if isinstance(runner.ops, Journal):
                try:
                    runner.ops.stop()
                except GroupLost:
                    logger.warning("a tensor-parallel rank was already gone at shutdown")

    # -- housekeeping (engine thread) ----------------------------------------------------
    def unload_idle(self, ttl: float) -> None:
        """Drop models idle longer than `ttl` (never the default chat model); their named
        KV sessions are written to disk first so they survive the unload."""
        now = time.monotonic()
        if now < self._next_unload_check:
            return
        self._next_unload_check = now + UNLOAD_CHECK_SECONDS
        for mid, runner in list(self.runners.items()):
            if mid == self.registry.default_chat or runner.has_work:
                continue
            if now - self._last_used.get(mid, now) > ttl:
                if runner.kv is not None:
                    runner.kv.store.persist_all()
                    runner.kv.store.clear()
                del self.runners[mid], self._handles[mid]
                logger.info("unloaded chat model %s after %.0fs idle", mid, ttl)
        for mid in list(self._asr_models):
            if not self.asr.has_work and now - self._last_used.get(mid, now) > ttl:
                del self._asr_models[mid]  # queued jobs hold their own reference
                logger.info("unloaded transcription model %s after %.0fs idle", mid, ttl)
        for mid in list(self._embedders):
            if now - self._last_used.get(mid, now) > ttl:
                del self._embedders[mid]  # queued tasks hold their own reference
                logger.info("unloaded embedding model %s after %.0fs idle", mid, ttl)

    def end_requests(self, message: str, *, keep_kv: bool = True) -> None:
        """End every request in flight with `message`: their KV kept in the stores, or,
        with keep_kv=False (the tensor-parallel group is lost), computing nothing."""
        self.asr.abort_all(message)
        self.embed.abort_all(ModelsShutDown(message))
        for runner in self.runners.values():
            if keep_kv:
                runner.abort_all(message)
            else:
                runner.fail_all(message)

    def shutdown(self, message: str) -> None:
        """End every request with `message` and write named KV sessions to disk."""
        self.end_requests(message)
        for runner in self.runners.values():
            if runner.kv is not None:
                written = runner.kv.store.persist_all()
                if written:
                    logger.info("persisted %d session caches of %s", written,
                                runner.loaded.fingerprint[:12])
