"""ChatRunner: continuous batching for one loaded chat model (engine thread only).

Prompts are prefilled one chunk per step into a private per-layer cache; when a
prompt is done its cache is merged into the shared left-padded batch cache
(mlx-lm's BatchKVCache), and every running sequence decodes one token per step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from app.engine import forward
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
                 kv: KVBridge | None = None, metrics: ModelMetrics | None = None) -> None:
        self.loaded = loaded
        self.metrics = metrics
        self.model = loaded.model
        self.decode_step = loaded.decode_step
        self.scheduler = scheduler
        self.kv = kv
        self.batch_cache: list[Any] | None = None
        self._inflight: _Inflight | None = None
        self._piece_cache: dict[int, str] = {}

    # -- queue management ---------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.metrics = self.metrics
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
                logger.exception("prefill failed for requests %s", [s.req.id for s in group])
                self._fail(group, exc, in_batch=False)
        if plan.decode and self.running:
            try:
                self._decode()
            except Exception as exc:
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
            logger.exception("decode step failed; failing %d sequences", len(self.running))
            self._fail(list(self.running), exc, in_batch=True)

    def _ensure_cache(self, seq: Sequence) -> list[Any]:
        if seq.cache is None:
            seq.cache = make_prompt_cache(self.model)
            if self.kv is not None:
                self.kv.seed(seq, seq.cache)
        return seq.cache

    def _prefill_chunk(self, seq: Sequence, n: int) -> None:
        self._ensure_cache(seq)
        assert seq.cache is not None
        start = seq.prefilled
        chunk = seq.prompt[start : start + n]
        t0 = time.perf_counter()
        last = start + len(chunk) >= len(seq.prompt)
        logits = forward.prefill(self.model, mx.array(chunk)[None], seq.cache,
                                 mx.array([len(chunk) - 1]) if last else None)
        seq.prefilled += len(chunk)
        if logits is None:
            mx.eval([c.state for c in seq.cache])
            self.scheduler.observe_prefill(len(chunk), time.perf_counter() - t0)
            return
        res = sample(logits, [seq.sampler], [seq.generated])
        self.scheduler.observe_prefill(len(chunk), time.perf_counter() - t0)
        seq.accept(res.tokens[0], self.piece, res.logprobs[0], res.top[0])
        seq.stream.flush()  # first token out before the KV merge into the batch
        if seq.finished:
            self.scheduler.remove(seq)
            self._release(seq, seq.cache)
            seq.cache = None
            return
        self._join_batch(seq)

    def _join_batch(self, seq: Sequence) -> None:
        assert seq.cache is not None
        self._extend_batch([type(c).merge([c]) for c in seq.cache], [seq])
        seq.cache = None

    def _extend_batch(self, caches: list[Any], seqs: list[Sequence]) -> None:
        if self.batch_cache is None:
            self.batch_cache = caches
        else:
            for batch, new in zip(self.batch_cache, caches):
                batch.extend(new)
        for seq in seqs:
            self.scheduler.promote(seq)

    def _prefill_group(self, group: list[Sequence]) -> None:
        """Finish several prompts in one forward: their cached prefixes are merged
        left-padded, their remaining tokens right-padded, then the right padding is
        rolled to the left (mlx-lm's BatchKVCache prepare/finalize)."""
        t0 = time.perf_counter()
        per_seq = [self._ensure_cache(s) for s in group]
        caches = [type(layer[0]).merge(list(layer)) for layer in zip(*per_seq)]
        rest = [s.prompt[s.prefilled :] for s in group]
        width = max(len(r) for r in rest)
        pads = [width - len(r) for r in rest]
        for c in caches:
            c.prepare(right_padding=pads)
        tokens = mx.array([r + [0] * p for r, p in zip(rest, pads)])
        last = forward.prefill(self.model, tokens, caches, mx.array([len(r) - 1 for r in rest]))
        assert last is not None
        for c in caches:
            c.finalize()
        res = sample(last, [s.sampler for s in group], [s.generated for s in group])
        self.scheduler.observe_prefill(sum(len(r) for r in rest), time.perf_counter() - t0)
        keep = []
        for i, seq in enumerate(group):
            seq.prefilled = len(seq.prompt)
            seq.cache = None
            seq.accept(res.tokens[i], self.piece, res.logprobs[i], res.top[i])
            seq.stream.flush()
            if seq.finished:
                self.scheduler.remove(seq)
                self._release(seq, [c.extract(i) for c in caches] if self.kv else None)
            else:
                keep.append(i)
        if not keep:
            return
        if len(keep) < len(group):
            for c in caches:
                c.filter(keep)
        self._extend_batch(caches, [group[i] for i in keep])

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
        """Logits [B, V] of one decode step: the model's injected `decode_step` where it
        covers the batch's caches (chosen at load, app/accel), else its own forward (lazy).

        An injected step is computed here and now, so pipelining gains nothing from it;
        it is used only where it is the faster path at every batch size.
        """
        assert self.batch_cache is not None
        fast = self.decode_step
        if fast is not None and fast.supports(self.batch_cache):
            tokens = np.asarray(prev.sample.tokens) if prev is not None else \
                np.array([s.last_token for s in rows])
            return mx.array(fast.step(tokens, self.batch_cache))
        if fast is not None:
            fast.release(self.batch_cache)
        inputs = prev.sample.tokens[:, None] if prev is not None else \
            mx.array([[s.last_token] for s in rows])
        return self.model(inputs, cache=self.batch_cache)[:, -1, :]

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
            self._release(seq, seq.cache if seq.prefilled else None)
            seq.cache = None
        dead = [s for s in self.running if s.aborted]
        for seq in dead:
            seq.finish("abort")
        self._drop_rows(dead)

    def _drop_rows(self, done: list[Sequence]) -> None:
        if not done:
            return
        rows = list(self.running)
        for seq in done:
            idx = rows.index(seq)
            extracted = None
            if self.kv is not None and self.batch_cache is not None:
                extracted = [c.extract(idx) for c in self.batch_cache]
            self._release(seq, extracted)
        keep = [i for i, s in enumerate(rows) if s not in done]
        for seq in done:
            self.scheduler.remove(seq)
        if not keep:
            self.batch_cache = None
        elif self.batch_cache is not None:
            for c in self.batch_cache:
                c.filter(keep)

    def _release(self, seq: Sequence, cache: list[Any] | None) -> None:
        """Hand a leaving sequence's KV to the store (kept for reuse) and free its budget."""
        if self.kv is None:
            return
        try:
            self.kv.release(seq, cache)
        except Exception:  # losing a cache entry is fine; losing the engine is not
            logger.exception("release hook failed for request %s", seq.req.id)

    def _fail(self, seqs: list[Sequence], exc: Exception, *, in_batch: bool) -> None:
        for seq in seqs:
            seq.finished = True
            seq.stream.put_threadsafe(Failed(f"generation failed: {exc}"))
            self.scheduler.remove(seq)
            seq.cache = None
            self._release(seq, None)
        if in_batch:
            self.batch_cache = None  # its rows no longer match the running list
            self._inflight = None

    def piece(self, token: int) -> str:
        """Text of one token, for logprobs."""
        text = self._piece_cache.get(token)
        if text is None:
            text = self.loaded.tokenizer.decode([token])
            self._piece_cache[token] = text
        return text

    def abort_all(self, message: str) -> None:
        """End every request with `message` (the server is stopping). Each one's KV goes
        to the store as on a client's abort, so a named session in flight is persisted
        with what was computed."""
        try:
            self.flush()
        except Exception:
            logger.exception("collecting the last decode step failed")
            self._inflight = None
            self.batch_cache = None
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
        self.batch_cache = None
        self._inflight = None
