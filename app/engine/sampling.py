"""Token selection for a batch whose rows each carry their own parameters.

Each row has a `RowSampler`: its logits processors (penalties, logit bias), an
optional constraint whose token mask is applied to the whole batch at once after them,
its temperature/top-k/top-p/min-p, and its own PRNG key so a seeded request gives the
same tokens whatever else shares the batch. Greedy rows take one batched argmax.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from app.engine.request import SamplingParams, TokenConstraint

# (generated token ids, logits[V]) -> logits[V]; a per-request hook.
LogitsProcessor = Callable[[list[int], mx.array], mx.array]
NEG_INF = float("-inf")
SEED_SPACE = 2**64  # mx.random.key takes an unsigned 64-bit seed
MASK_BITS = 32  # token masks are int32 words, bit i of word w = token 32*w + i


def penalty_processor(params: SamplingParams, prompt: Sequence[int]) -> LogitsProcessor | None:
    """OpenAI presence/frequency penalties over generated tokens; repetition penalty
    (HF/vLLM semantics: divide positive logits, multiply negative) over prompt + output."""
    pres, freq, rep = params.presence_penalty, params.frequency_penalty, params.repetition_penalty
    if pres == 0 and freq == 0 and rep == 1.0:
        return None
    prompt_ids = sorted(set(prompt))
    counts: Counter[int] = Counter()
    seen = [0]  # how many generated tokens are already counted

    def apply(generated: list[int], logits: mx.array) -> mx.array:
        counts.update(generated[seen[0] :])
        seen[0] = len(generated)
        if rep != 1.0:
            ids = mx.array(sorted(set(prompt_ids) | counts.keys()))
            vals = logits[ids]
            logits[ids] = mx.where(vals > 0, vals / rep, vals * rep)
        if counts and (pres or freq):
            ids = mx.array(list(counts.keys()))
            c = mx.array(list(counts.values()), dtype=logits.dtype)
            logits = logits.at[ids].add(-(c * freq + pres))
        return logits

    return apply


def bias_processor(bias: dict[int, float]) -> LogitsProcessor | None:
    if not bias:
        return None
    ids = mx.array(list(bias.keys()))
    vals = mx.array(list(bias.values()), dtype=mx.float32)

    def apply(generated: list[int], logits: mx.array) -> mx.array:
        return logits.at[ids].add(vals.astype(logits.dtype))

    return apply


@dataclass(slots=True)
class RowSampler:
    params: SamplingParams
    processors: list[LogitsProcessor] = field(default_factory=list)
    key: mx.array | None = None
    constraint: TokenConstraint | None = None
    """Constrained decoding: its mask is applied after every processor, for the whole
    batch in one operation (launch_sample)."""
    consumed: int = 0
    """Generated tokens already told to the constraint."""

    @classmethod
    def create(cls, params: SamplingParams, prompt: Sequence[int],
               constraint: TokenConstraint | None = None) -> RowSampler:
        procs = [p for p in (penalty_processor(params, prompt),
                             bias_processor(params.logit_bias)) if p]
        key = None
        if not params.greedy:
            seed = params.seed
            if seed is None:
                seed = int.from_bytes(os.urandom(4), "little")
            key = mx.random.key(seed % SEED_SPACE)  # a negative int64 seed maps in too
        return cls(params, procs, key, constraint)

    def fill_mask(self, generated: list[int], words: np.ndarray) -> None:
        """Tell the constraint the tokens sampled since the last step, then write the
        next token's mask into `words`."""
        assert self.constraint is not None
        for token in generated[self.consumed :]:
            self.constraint.consume(token)
        self.consumed = len(generated)
        self.constraint.fill(words)

    def next_key(self) -> mx.array:
        assert self.key is not None
        self.key, sub = mx.random.split(self.key)
        return sub


@dataclass(slots=True)
class SampleResult:
    tokens: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]]]


def _filter(logits: mx.array, p: SamplingParams) -> mx.array:
    """Mask logits outside top-k / top-p / min-p for one row (1-D)."""
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = mx.sort(logits)[-p.top_k]
        logits = mx.where(logits < kth, NEG_INF, logits)
    if p.min_p > 0.0:
        probs = mx.softmax(logits)
        logits = mx.where(probs < p.min_p * probs.max(), NEG_INF, logits)
    if p.top_p < 1.0:
        order = mx.argsort(-logits)
        sorted_probs = mx.softmax(logits[order])
        # keep a token if the mass before it is below top_p, and always the first (a top_p
        # like 5e-324 is 0 in float32 and would keep nothing: token 0 every step)
        before = mx.cumsum(sorted_probs) - sorted_probs
        keep_sorted = (before < p.top_p) | (mx.arange(before.shape[0]) == 0)
        keep = mx.zeros_like(keep_sorted)
        keep[order] = keep_sorted
        logits = mx.where(keep, logits, NEG_INF)
    return logits


@dataclass(slots=True)
class PendingSample:
    """Sampled tokens of a batch, still lazy: resolve() waits for them."""

    tokens: mx.array
    chosen: mx.array | None = None
    logprobs: mx.array | None = None


def launch_sample(
    logits: mx.array, rows: Sequence[RowSampler], generated: Sequence[list[int]]
) -> PendingSample:
    """Build the sampling graph for logits[B, V] without evaluating it."""
    x_all = logits.astype(mx.float32)
    if any(r.processors for r in rows):
        # Sliced per row only here: a batch of plain rows (the usual case) builds no
        # per-row graph every step.
        processed = []
        for i, row in enumerate(rows):
            x = x_all[i]
            for proc in row.processors:
                x = proc(generated[i], x)
            processed.append(x)
        x_all = mx.stack(processed)
    if any(r.constraint is not None for r in rows):
        x_all = _masked(x_all, rows, generated)

    tokens = mx.argmax(x_all, axis=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        # Only the non-greedy rows pay for per-row filtering and their own PRNG key.
        picks = [mx.random.categorical(_filter(x_all[i] / rows[i].params.temperature,
                                               rows[i].params), key=rows[i].next_key())
                 for i in sampled]
        tokens[mx.array(sampled)] = mx.stack(picks).astype(tokens.dtype)
    if not any(r.params.logprobs for r in rows):
        return PendingSample(tokens)
    logprobs = x_all - mx.logsumexp(x_all, axis=-1, keepdims=True)
    chosen = mx.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
    return PendingSample(tokens, chosen, logprobs)


def _masked(logits: mx.array, rows: Sequence[RowSampler],
            generated: Sequence[list[int]]) -> mx.array:
    """`logits` [B, V] with every token a row's constraint forbids at -inf. The device
    computes the step while the masks are built on the CPU; they travel as bit words."""
    mx.async_eval(logits)
    vocab = logits.shape[-1]
    words = np.zeros((len(rows), -(-vocab // MASK_BITS)), dtype=np.int32)
    for i, row in enumerate(rows):
        if row.constraint is None:
            words[i] = -1  # every bit set: everything allowed
        else:
            row.fill_mask(generated[i], words[i])
    shifts = mx.arange(MASK_BITS, dtype=mx.int32)
    bits = (mx.array(words)[:, :, None] >> shifts) & 1
    allowed = bits.reshape(len(rows), -1)[:, :vocab].astype(mx.bool_)
    return mx.where(allowed, logits, NEG_INF)


def resolve(pending: PendingSample, rows: Sequence[RowSampler]) -> SampleResult:
    """Wait for a launched sample and bring it into Python."""
    # mx.eval waits with the GIL released (tolist() alone would hold it), so the event
    # loop thread can stream the previous step's tokens meanwhile.
    mx.eval(pending.tokens, *(a for a in (pending.chosen,) if a is not None))
    tok_list: list[int] = pending.tokens.tolist()  # type: ignore[assignment]
    lps: list[float | None] = [None] * len(rows)
    tops: list[list[tuple[int, float]]] = [[] for _ in rows]
    if pending.chosen is not None and pending.logprobs is not None:
        chosen_list = pending.chosen.tolist()
        for i, row in enumerate(rows):
            if not row.params.logprobs:
                continue
            lps[i] = float(chosen_list[i])  # type: ignore[index,arg-type]
            k = row.params.top_logprobs
            if k > 0:
                idx = mx.argsort(-pending.logprobs[i])[:k]
                vals = pending.logprobs[i][idx]
                tops[i] = list(zip(idx.tolist(), vals.tolist()))  # type: ignore[arg-type]
    return SampleResult(tok_list, lps, tops)


def sample(
    logits: mx.array, rows: Sequence[RowSampler], generated: Sequence[list[int]]
) -> SampleResult:
    """Pick one token per row of logits[B, V] (launch and wait)."""
    return resolve(launch_sample(logits, rows, generated), rows)
