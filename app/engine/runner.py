"""ChatRunner: continuous batching for one loaded chat model (engine thread only).

Prompts are prefilled one chunk per step into a private per-layer cache; when a
prompt is done its cache is merged into the shared left-padded batch cache
(mlx-lm's BatchKVCache), and every running sequence decodes one token per step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import mlx.core as mx

from app.engine.cache_ops import BATCH, CacheOps
from app.engine.kv_bridge import KVBridge
from app.engine.request import Failed
from app.engine.sampling import PendingSample, launch_sample, resolve, sample
from app.engine.scheduler import Scheduler
from app.engine.sequence import Sequence
from app.metrics import ModelMetrics
from app.models.types import LoadedChatModel

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Inflight:
    rows: list[Sequence]
    sample: PendingSample


class ChatRunner:
    def __init__(self, loaded: LoadedChatModel, scheduler: Scheduler,
                 kv: KVBridge | None = None, metrics: ModelMetrics | None = None,
                 ops: CacheOps | None = None) -> None:
        self.loaded = loaded
        self.metrics = metrics
        self.model = loaded.model
        self.scheduler = scheduler
        self.kv = kv
        self.ops = ops or CacheOps(loaded.model, loaded.decode_step,
                                   kv.layers_of if kv is not None else None)
        if kv is not None:
            kv.attach(self.ops)
        self._inflight: _Inflight | None = None
        self._piece_cache: dict[int, str] = {}

    # -- queue management ---------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.metrics = self.metrics
        if self.kv is not None and seq.cache_entry is not None:
            # Seeded now, so the cache no longer needs the entry's id once it is queued.
            seq.cache = self.ops.new(seq.cache_entry.id, seq.cached_tokens)
        self.scheduler.add(seq)

    def abort(self, request_id: int) -> bool:
        for seq in self._all():
            if seq.req.id == request_id:
                seq.aborted = True
                return True
        return False

    def _all(self) -> list[Sequence]:
        return [*self.scheduler.waiting, *self.scheduler.running]  # type: ignore[list-item]

    def _waiting(self) -> list[Sequence]:
        return self.scheduler.waiting  # type: ignore[return-value]

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running  # type: ignore[return-value]

    # -- one engine step ----------------------------------------------------
    def step(self) -> None:
        self._reap_aborted()
        plan = self.scheduler.plan()
        group: list[Sequence] = plan.prefill  # type: ignore[assignment]
        if group:
            try:
                if len(group) == 1:
                    self._prefill_chunk(group[0], plan.chunk)
                else:
                    self._prefill_group(group)
            except Exception as exc:  # one bad prompt must not take the engine down
                self.ops.check(exc)  # a lost tensor-parallel rank: GroupLost, not a failure
                logger.exception("prefill failed for requests %s", [s.req.id for s in group])
                self._fail(group, exc, in_batch=False)
        if plan.decode and self.running:
            try:
                self._decode()
            except Exception as exc:
                self.ops.check(exc)
                logger.exception("decode step failed; failing %d sequences", len(self.running))
                self._fail(list(self.running), exc, in_batch=True)

    def settle(self) -> None:
        """Finish pending decode work now if finished rows wait in it to complete their KV,
        so a follow-up request admitted next finds the whole previous turn in the store."""
        try:
            self.flush()
            if any(s.finished for s in self.running):
                self._decode()
                self.flush()
        except Exception as exc:
            self.ops.check(exc)
            logger.exception("decode step failed; failing %d sequences", len(self.running))
            self._fail(list(self.running), exc, in_batch=True)

    def _ensure_cache(self, seq: Sequence) -> int:
        if seq.cache is None:
            seq.cache = self.ops.new()
        if self.kv is not None:
            self.kv.started(seq)
        return seq.cache

    def _prefill_chunk(self, seq: Sequence, n: int) -> None:
        h = self._ensure_cache(seq)
        start = seq.prefilled
        chunk = seq.prompt[start : start + n]
        t0 = time.perf_counter()
        last = start + len(chunk) >= len(seq.prompt)
        logits = self.ops.run("prefill", h, chunk, last)
        seq.prefilled += len(chunk)
        if logits is None:
            self.scheduler.observe_prefill(len(chunk), time.perf_counter() - t0)
            return
        res = sample(logits, [seq.sampler], [seq.generated])
        self.scheduler.observe_prefill(len(chunk), time.perf_counter() - t0)
        seq.accept(res.tokens[0], self.piece, res.logprobs[0], res.top[0])
        seq.stream.flush()  # first token out before the KV merge into the batch
        if seq.finished:
            self.scheduler.remove(seq)
            self._release(seq, h)
            seq.cache = None
            return
        self.ops.run("join", h)
        seq.cache = None
        self.scheduler.promote(seq)

    def _prefill_group(self, group: list[Sequence]) -> None:
        """Finish several prompts in one forward: their cached prefixes are merged
        left-padded, their remaining tokens right-padded, then the right padding is
        rolled to the left (mlx-lm's BatchKVCache prepare/finalize)."""
        t0 = time.perf_counter()
        per_seq = [self._ensure_cache(s) for s in group]
        rest = [s.prompt[s.prefilled :] for s in group]
        g = self.ops.handle()
        for s in group:
            s.cache = None  # merged into g by the forward below
        last = self.ops.run("group", g, per_seq, rest)
        res = sample(last, [s.sampler for s in group], [s.generated for s in group])
        self.scheduler.observe_prefill(sum(len(r) for r in rest), time.perf_counter() - t0)
        keep = []
        for i, seq in enumerate(group):
            seq.prefilled = len(seq.prompt)
            seq.accept(res.tokens[i], self.piece, res.logprobs[i], res.top[i])
            seq.stream.flush()
            if seq.finished:
                self.scheduler.remove(seq)
                self._release(seq, self._extract(g, i))
            else:
                keep.append(i)
        if len(keep) < len(group):
            self.ops.run("filter", g, keep)
        if not keep:
            return
        self.ops.run("extend_with", g)
        for i in keep:
            self.scheduler.promote(group[i])

    def _extract(self, src: int, row: int) -> int | None:
        """A per-sequence copy of one row of `src`, for the store (None without one)."""
        if self.kv is None:
            return None
        dst = self.ops.handle()
        self.ops.run("extract", src, row, dst)
        return dst

    def _decode(self) -> None:
        """One decode step for every running row.

        While the batch is unchanged and no row samples from Python-side state
        (penalties), step t+1 is launched on the device before step t's tokens are read
        back, so the device does not wait for per-token Python work (detokenize, stop
        strings, events). With constrained rows only step t+1's forward is launched
        early: their masks need step t's tokens. Any change of the batch first collects
        the step in flight.
        """
        rows = list(self.running)
        prev = self._inflight
        if prev is not None and prev.rows != rows:
            self.flush()
            rows, prev = list(self.running), None
            if not rows:
                return
        logits = self._step_logits(prev, rows)
        samplers, generated = [s.sampler for s in rows], [s.generated for s in rows]
        # Rows that finished and are in the batch only to feed their final token must
        # leave right after this step: launching another step first would feed them a
        # token past the end, and their stored KV would no longer match their tokens.
        if not any(s.sampler.processors or s.finished for s in rows):
            constrained = any(s.sampler.constraint is not None for s in rows)
            if constrained and prev is not None:
                # A row's mask needs the last step's token: the device runs this step's
                # forward while the last step is collected, then this step is sampled.
                mx.async_eval(logits)
                self._inflight = None
                self._collect(prev, next_launched=True)
            launched = _Inflight(rows, launch_sample(logits, samplers, generated))
            mx.async_eval(launched.sample.tokens)
            self._inflight = launched
            if prev is not None and not constrained:
                self._collect(prev, next_launched=True)
            return
        launched = _Inflight(rows, launch_sample(logits, samplers, generated))
        self._inflight = None
        if prev is not None:
            self._collect(prev, next_launched=True)
        self._collect(launched, next_launched=False)

    def _step_logits(self, prev: _Inflight | None, rows: list[Sequence]) -> mx.array:
        """Logits [B, V] of one decode step (the inputs are the last step's samples, lazy)."""
        tokens = prev.sample.tokens if prev is not None else \
            mx.array([s.last_token for s in rows])
        return self.ops.decode(tokens)

    def _collect(self, inflight: _Inflight, *, next_launched: bool) -> None:
        """Read a step's tokens back and hand them to their sequences."""
        res = resolve(inflight.sample, [s.sampler for s in inflight.rows])
        live = set(map(id, self.running))
        done = []
        for i, seq in enumerate(inflight.rows):
            if id(seq) not in live:
                continue  # left the batch (aborted, failed) after this step was launched
            if seq.finished:
                # Finished earlier and kept for this step only to feed its final token, so
                # the stored KV covers prompt + whole completion (the next turn's prefix).
                done.append(seq)
                continue
            seq.accept(res.tokens[i], self.piece, res.logprobs[i], res.top[i])
            if seq.finished and (next_launched or self.kv is None):
                done.append(seq)  # a launched step already feeds its final token
        self._drop_rows(done)

    def flush(self) -> None:
        """Collect the step in flight, if any (before the batch changes)."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            self._collect(inflight, next_launched=False)

    # -- leaving the batch --------------------------------------------------
    def _reap_aborted(self) -> None:
        for seq in [s for s in self._all() if s.aborted]:
            logger.info("request %d aborted after %d/%d prompt tokens, %d generated",
                        seq.req.id, seq.prefilled, len(seq.prompt), len(seq.generated))
        for seq in [s for s in self._waiting() if s.aborted]:
            self.scheduler.remove(seq)
            seq.finish("abort")
            # Keep what was prefilled: a retry of the same prompt resumes from it.
            if seq.cache is not None and seq.prefilled <= seq.cached_tokens:
                # Only a seeded prefix, nothing computed: the store already holds it.
                self.ops.run("free", seq.cache)
                seq.cache = None
            self._release(seq, seq.cache)
            seq.cache = None
        dead = [s for s in self.running if s.aborted]
        for seq in dead:
            seq.finish("abort")
        self._drop_rows(dead)

    def _drop_rows(self, done: list[Sequence]) -> None:
        if not done:
            return
        rows = list(self.running)
        batch = self.ops.has_batch()
        for seq in done:
            self._release(seq, self._extract(BATCH, rows.index(seq)) if batch else None)
        keep = [i for i, s in enumerate(rows) if s not in done]
        for seq in done:
            self.scheduler.remove(seq)
        if batch:
            self.ops.run("filter", BATCH, keep)

    def _release(self, seq: Sequence, cache: int | None) -> None:
        """Hand a leaving sequence's KV (per-sequence cache `cache`) to the store, kept
        for reuse, and free its budget; the cache handle is freed either way."""
        try:
            if self.kv is not None:
                self.kv.release(seq, cache)
        except Exception as exc:  # losing a cache entry is fine; losing the engine is not
            self.ops.check(exc)
            logger.exception("release hook failed for request %s", seq.req.id)
        finally:
            if cache is not None:
                self.ops.run("free", cache)

    def _fail(self, seqs: list[Sequence], exc: Exception, *, in_batch: bool) -> None:
        for seq in seqs:
            seq.finished = True
            seq.stream.put_threadsafe(Failed(f"generation failed: {exc}"))
            self.scheduler.remove(seq)
            if seq.cache is not None:
                self._drop_handle(seq.cache)
            seq.cache = None
            self._release(seq, None)
        if in_batch:
            self._drop_handle(BATCH)  # its rows no longer match the running list
            self._inflight = None

    def _drop_handle(self, h: int) -> None:
        try:
            self.ops.run("free", h)
        except Exception as exc:
            self.ops.check(exc)
            logger.exception("freeing a failed cache failed")

    def piece(self, token: int) -> str:
        """Text of one token, for logprobs."""
        text = self._piece_cache.get(token)
        if text is None:
            text = self.loaded.tokenizer.decode([token])
            self._piece_cache[token] = text
        return text

    def fail_all(self, message: str) -> None:
        """End every request with `message` without touching MLX (the tensor-parallel
        group is gone: its arrays can no longer be computed)."""
        for seq in self._all():
            if not seq.finished:
                seq.finished = True
                seq.stream.put_threadsafe(Failed(message, code="tensor_parallel_group_lost",
                                                 status=503))
        self.scheduler.waiting.clear()
        self.scheduler.running.clear()
        self._inflight = None

    def abort_all(self, message: str) -> None:
        """End every request with `message` (the server is stopping). Each one's KV goes
        to the store as on a client's abort, so a named session in flight is persisted
        with what was computed."""
        try:
            self.flush()
        except Exception as exc:
            self.ops.check(exc)
            logger.exception("collecting the last decode step failed")
            self._inflight = None
            self._drop_handle(BATCH)
        for seq in self._all():
            if not seq.finished:
                seq.finished = True
                seq.stream.put_threadsafe(Failed(message, code="shutdown", status=503))
            seq.aborted = True
        try:
            self._reap_aborted()
        except Exception:  # losing caches is fine; a shutdown that hangs is not
            logger.exception("keeping the KV of ended requests failed")
        self.scheduler.waiting.clear()
        self.scheduler.running.clear()
        self._drop_handle(BATCH)
        self._inflight = None
