"""Which work the engine does next: pure Python, no MLX, unit-tested with fakes.

Policy:
- Running sequences decode together every step (continuous batching).
- One prefill per step, for the waiting sequence with the fewest prompt tokens
  left (a short request is not stuck behind a long prompt). Prompts that fit in
  one chunk are prefilled together, padded to the longest, as one batch (a burst
  of short requests costs one forward, not one each).
- A chunk is sized from the measured prefill rate so it takes about
  `busy_chunk_seconds` while streams are decoding (they wait for it) and about
  `idle_chunk_seconds` when nothing is (a request that arrives, or a client that hangs
  up, gets its turn within that time on any machine); `idle_chunk` tokens at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MIN_CHUNK = 16
RATE_EMA = 0.3  # weight of the newest prefill-rate sample
# A chunk that would leave less than 1/TAIL_FRACTION of itself behind takes the rest along:
# a step of its own for a few tokens costs a whole forward's fixed part (a 1,033-token
# prompt in 512-token chunks left a 9-token third chunk), the longer chunk at most 1/8 more.
TAIL_FRACTION = 8


class Schedulable(Protocol):
    @property
    def prefill_remaining(self) -> int: ...


@dataclass(slots=True)
class StepPlan:
    prefill: list[Schedulable] = field(default_factory=list)
    """One sequence (possibly a chunk of its prompt) or several finishing their prompts."""
    chunk: int = 0
    """Prompt tokens this step for a single sequence; the padded width for a group."""
    decode: bool = False

@dataclass(slots=True)
class Scheduler:
    max_batch: int = 32
    idle_chunk: int = 512
    busy_chunk_seconds: float = 0.25
    idle_chunk_seconds: float = 1.0
    waiting: list[Schedulable] = field(default_factory=list)
    running: list[Schedulable] = field(default_factory=list)
    prefill_rate: float | None = None
    """Measured prompt tokens per second (EMA), None until the first chunk."""

    def add(self, seq: Schedulable) -> None:
        self.waiting.append(seq)

    def promote(self, seq: Schedulable) -> None:
        """A sequence finished its prefill and joins the decode batch."""
        self.waiting.remove(seq)
        self.running.append(seq)

    def remove(self, seq: Schedulable) -> None:
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        if tokens < MIN_CHUNK or seconds <= 0:
            return  # tiny chunks are dominated by fixed overhead
        rate = tokens / seconds
        prev = self.prefill_rate
        self.prefill_rate = rate if prev is None else (1 - RATE_EMA) * prev + RATE_EMA * rate

    def busy_chunk(self) -> int:
        return self._timed_chunk(self.busy_chunk_seconds)

    def idle_chunk_now(self) -> int:
        return self._timed_chunk(self.idle_chunk_seconds)

    def _timed_chunk(self, seconds: float) -> int:
        if self.prefill_rate is None:  # the first chunk measures the rate
            return max(MIN_CHUNK, self.idle_chunk // 4)
        return max(MIN_CHUNK, min(self.idle_chunk, int(self.prefill_rate * seconds)))

    def plan(self) -> StepPlan:
        plan = StepPlan(decode=bool(self.running))
        free = self.max_batch - len(self.running)
        if not self.waiting or free <= 0:
            return plan
        limit = self.busy_chunk() if self.running else self.idle_chunk_now()
        order = sorted(self.waiting, key=lambda s: s.prefill_remaining)
        first = order[0]
        if first.prefill_remaining > limit:
            tail = first.prefill_remaining - limit
            plan.prefill = [first]
            plan.chunk = first.prefill_remaining if tail < limit // TAIL_FRACTION else limit
            return plan
        width = 0
        for seq in order[:free]:
            w = max(width, seq.prefill_remaining)
            if w * (len(plan.prefill) + 1) > limit:
                break  # padded tokens of the group stay within one chunk's budget
            plan.prefill.append(seq)
            width = w
        plan.chunk = width
        return plan

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
