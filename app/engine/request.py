"""What the serving layer hands the engine, and what comes back. Plain data, no MLX."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from app.audio.transcript import Segment, TranscriptionResult

FinishReason = Literal["stop", "length", "abort", "error"]

_ids = itertools.count(1)


def next_request_id() -> int:
    return next(_ids)


MIN_TEMPERATURE = 1e-6
"""Temperatures below this are greedy."""


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 1.0
    """0 (below MIN_TEMPERATURE) means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        # A tiny temperature samples the argmax anyway, and logits / 1e-40 overflow float32
        # (a sample of infinities is token 0, not the likeliest one)
        return self.temperature < MIN_TEMPERATURE


class TokenConstraint(Protocol):
    """Which tokens may come next (app/text/grammar.py's Constraint): asked before every
    sampling step of its row, told every sampled token."""

    def fill(self, words: np.ndarray) -> None:
        """Write the tokens that may come next into `words` (int32; bit i of word w is
        token 32*w + i), which starts all zero and may be longer than the mask."""

    def consume(self, token: int) -> bool:
        """Advance past a sampled token; False when it was not allowed."""


@dataclass(slots=True)
class GenerationRequest:
    model_id: str
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    session: str | None = None
    """prompt_cache_key or X-Session-ID: a named resident KV cache."""
    constraint: TokenConstraint | None = None
    """Constrained decoding (structured output): only tokens it allows are sampled."""
    cache_namespace: str = ""
    """Prefix reuse happens only between requests of one namespace (the tenant's API key,
    a client's cache_salt); "" is the shared one."""
    created: float = field(default_factory=time.perf_counter)
    """perf_counter() when serving built the request: time to first token starts here."""
    id: int = field(default_factory=next_request_id)


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Delta:
    """New text (stop-string safe) and the tokens that produced it."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def merge(self, other: Delta) -> None:
        self.text += other.text
        self.token_ids.extend(other.token_ids)
        self.logprobs.extend(other.logprobs)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_choice(self, other: Usage) -> None:
        """Fold in one of `n` choices: they share the prompt, completions add up."""
        self.prompt_tokens = other.prompt_tokens
        self.cached_tokens = max(self.cached_tokens, other.cached_tokens)
        self.completion_tokens += other.completion_tokens


@dataclass(slots=True)
class Finished:
    reason: FinishReason
    usage: Usage
    cache_info: str | None = None
    """How the prompt met the KV cache: reused length or miss reason."""


@dataclass(slots=True)
class Admitted:
    """The engine accepted the request (KV budget reserved, cache looked up)."""

    cached_tokens: int = 0
    cache_info: str | None = None


@dataclass(slots=True)
class Failed:
    message: str
    type: str = "server_error"
    code: str | None = None
    status: int = 500
    retry_after: int | None = None


@dataclass(slots=True)
class TranscriptSegments:
    """Segments completed by one transcription window."""

    segments: list[Segment]


@dataclass(slots=True)
class TranscriptDone:
    result: TranscriptionResult


Event = Admitted | Delta | Finished | Failed | TranscriptSegments | TranscriptDone
FINAL_EVENTS = (Finished, Failed, TranscriptDone)
