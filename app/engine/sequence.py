"""One generation request's state inside the engine thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.engine.request import Delta, Finished, FinishReason, GenerationRequest, TokenLogprob, Usage
from app.engine.sampling import RowSampler
from app.engine.stream import RequestStream
from app.kv.records import KVEntry
from app.metrics import ModelMetrics
from app.text.detokenize import IncrementalDetokenizer
from app.text.stops import StopMatcher


@dataclass(slots=True, eq=False)  # identity semantics: sequences live in lists
class Sequence:
    req: GenerationRequest
    stream: RequestStream
    sampler: RowSampler
    detok: IncrementalDetokenizer
    stops: StopMatcher
    eos_ids: set[int]
    context_length: int
    prefilled: int = 0
    """Prompt tokens whose KV is computed (cached or prefilled)."""
    cached_tokens: int = 0
    cache_info: str | None = None
    cache_entry: KVEntry | None = None
    """A pinned KV store entry whose prefix seeds the first prefill chunk."""
    reserved_bytes: int = 0
    """KV bytes reserved in the store's budget for this request."""
    cache: int | None = None
    """Handle of its per-sequence KV cache (the runner's CacheOps) while queued or
    prefilling; None once merged into the batch."""
    generated: list[int] = field(default_factory=list)
    last_token: int = -1
    aborted: bool = False
    finished: bool = False
    metrics: ModelMetrics | None = None
    """The model's token metrics (set by its runner); None observes nothing."""
    last_token_at: float = 0.0
    """perf_counter() when the last token was accepted (inter-token latency)."""

    @property
    def prompt(self) -> list[int]:
        return self.req.prompt_tokens

    @property
    def prefill_remaining(self) -> int:
        return len(self.req.prompt_tokens) - self.prefilled

    def accept(self, token: int, decode_piece: Callable[[int], str], logprob: float | None,
               top: list[tuple[int, float]]) -> None:
        """Take a sampled token: emit stop-safe text; finish on eos, stop string or length."""
        self.generated.append(token)
        self.last_token = token
        if self.metrics is not None:
            now = time.perf_counter()
            if len(self.generated) == 1:
                self.metrics.ttft.observe(now - self.req.created)
            else:
                self.metrics.itl.observe(now - self.last_token_at)
            self.last_token_at = now
        lps: list[TokenLogprob] = []
        if logprob is not None:
            lps.append(TokenLogprob(decode_piece(token), logprob,
                                    [(decode_piece(t), v) for t, v in top]))
        reason: FinishReason | None = None
        if token in self.eos_ids:
            text = self._remaining_text()
            reason = "stop"
        else:
            text = self.stops.push(self.detok.add(token))
            if self.stops.stopped:
                reason = "stop"
            elif (len(self.generated) >= self.req.max_tokens
                  or len(self.req.prompt_tokens) + len(self.generated) >= self.context_length):
                text += self._remaining_text()
                reason = "length"
        # Sent even without text (half a UTF-8 character): token counts stay exact.
        self.stream.put_threadsafe(Delta(text, [token], lps))
        if reason is not None:
            self.finish(reason)

    def _remaining_text(self) -> str:
        """Held-back text at the end: a partial character, then a partial stop string."""
        return self.stops.push(self.detok.flush()) + self.stops.flush()

    def finish(self, reason: FinishReason) -> None:
        if self.finished:
            return
        self.finished = True
        usage = Usage(len(self.req.prompt_tokens), len(self.generated), self.cached_tokens)
        if self.metrics is not None:
            self.metrics.finished(usage.prompt_tokens, usage.completion_tokens,
                                  usage.cached_tokens)
        self.stream.put_threadsafe(Finished(reason, usage, self.cache_info))
