"""Decode one 30 s window: greedy, sampled (best-of-n) or beam search, with Whisper's
timestamp rules and token suppression (rules.py) applied to the logits in numpy.

The window's cross-attention K/V is computed once by the caller and shared by every
beam, sample and temperature retry. Forward passes go through the model's
`ops.window_steps` where one is injected (app/models/whisper/ops.py), else the MLX
decoder (mlx_steps.py).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from app.models.whisper.logprobs import log_softmax, top_k
from app.models.whisper.mlx_steps import MlxWindowSteps
from app.models.whisper.model import Whisper
from app.models.whisper.ops import KVCache, WindowSteps
from app.models.whisper.rules import MAX_INITIAL_TIMESTAMP, LogitRules
from app.models.whisper.steps import Steps, run_to_end
from app.models.whisper.tokenizer import WhisperTokenizer

logger = logging.getLogger(__name__)

# How often (in decoder steps) a hypothesis is checked for a repetition loop: the check
# decodes and zlib-compresses its text (~50 us), a loop costs ~30 ms a step.
LOOP_CHECK_STEPS = 16
# Previous-text prompt tokens per forward pass (then a pause): a whole 223-token prompt
# is ~0.14 s of tiny.en on a 2-core CPU, more than a turn between chat steps should be;
# two passes cost ~10% more, smaller chunks (48: +20%) more again.
PROMPT_CHUNK = 112


@dataclass(slots=True)
class DecodingOptions:
    temperature: float = 0.0
    sample_len: int | None = None
    """Most tokens to sample; default half the text context (224)."""
    beam_size: int = 5
    """Beams at temperature 0; 1 is greedy."""
    best_of: int = 5
    """Independent samples at temperature > 0; the most likely is kept."""
    patience: float = 1.0
    length_penalty: float | None = None
    """None ranks by mean log-probability; a float uses Google NMT's ((5+n)/6)^alpha."""
    prompt: list[int] = field(default_factory=list)
    """Previous-text tokens, given after <|startofprev|>."""
    without_timestamps: bool = False
    suppress_blank: bool = True
    max_initial_timestamp: float | None = MAX_INITIAL_TIMESTAMP
    compression_ratio_threshold: float | None = None
    """Stop a hypothesis once its text compresses better than this (a repetition loop,
    which would only grow to the token limit); None = never."""


@dataclass(slots=True)
class DecodeResult:
    tokens: list[int]
    """Sampled tokens (text and timestamps), without <|endoftext|>."""
    text: str
    avg_logprob: float
    sum_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    cut: bool = False
    """Decoding stopped before the hypothesis ended (`should_stop`, the caller's time limit)."""


def compression_ratio(text: str) -> float:
    """How well zlib squeezes `text`: repeated loops (hallucinations) score above ~2.4."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


class WindowDecoder:
    """Runs the decoder over one window's audio features."""

    def __init__(
        self,
        model: Whisper,
        tokenizer: WhisperTokenizer,
        cross_kv: KVCache,
        sot_sequence: list[int],
        suppress_tokens: list[int],
        begin_suppress_tokens: list[int],
        rng: np.random.Generator | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cross_kv = cross_kv
        self.sot_sequence = sot_sequence
        self.suppress_tokens = suppress_tokens
        self.begin_suppress_tokens = begin_suppress_tokens
        self.rng = rng or np.random.default_rng(0)
        custom = model.ops.window_steps
        injected = custom(model, cross_kv) if custom is not None else None
        self.steps: WindowSteps = injected or MlxWindowSteps(model, cross_kv)

    def initial_tokens(self, options: DecodingOptions) -> list[int]:
        n_ctx = self.model.dims.n_text_ctx
        tokens = []
        if options.prompt:
            # at most half the context is spent on earlier text
            tokens = [self.tokenizer.special.sot_prev, *options.prompt[-(n_ctx // 2 - 1) :]]
        tokens += self.sot_sequence
        if options.without_timestamps:
            tokens.append(self.tokenizer.special.no_timestamps)
        return tokens

    def decode(self, options: DecodingOptions) -> DecodeResult:
        return run_to_end(self.decode_steps(options))

    def decode_steps(self, options: DecodingOptions,
                     should_stop: Callable[[], bool] | None = None) -> Steps[DecodeResult]:
        """`decode` as a generator that yields after every decoder step, so the engine
        can run chat steps in between; returns the result. `should_stop` is asked after
        every step: True ends decoding with the best hypothesis so far (`cut`)."""
        initial = self.initial_tokens(options)
        n_ctx = self.model.dims.n_text_ctx
        sample_len = options.sample_len or n_ctx // 2
        sample_len = max(1, min(sample_len, n_ctx - len(initial)))
        rules = LogitRules(
            self.tokenizer,
            self.model.dims.n_vocab,
            self.suppress_tokens,
            self.begin_suppress_tokens,
            timestamps=not options.without_timestamps,
            suppress_blank=options.suppress_blank,
            max_initial_timestamp=options.max_initial_timestamp,
        )
        sot_index = initial.index(self.tokenizer.special.sot)
        cache = None
        for start in range(0, sot_index, PROMPT_CHUNK):  # <|startofprev|> and the prompt
            chunk = initial[start : min(start + PROMPT_CHUNK, sot_index)]
            _, cache = self._forward(np.array([chunk]), cache)
            yield
        sot = initial[sot_index:]
        logits, cache = self._forward(np.array([sot]), cache, [0, len(sot) - 1])
        first = logits[0]
        no_speech_prob = float(
            np.exp(log_softmax(first[0].astype(np.float64))[self.tokenizer.special.no_speech])
        )
        stop = _Stop(self.tokenizer, options.compression_ratio_threshold, should_stop)
        if options.temperature == 0 and options.beam_size > 1:
            tokens, sum_lp = yield from self._beam_search(
                first[1], cache, rules, options, sample_len, stop)
        else:
            n = 1 if options.temperature == 0 else max(1, options.best_of)
            tokens, sum_lp = yield from self._sample(
                first[1], cache, rules, options, sample_len, n, stop)
        text = self.tokenizer.decode(tokens)
        return DecodeResult(
            tokens=tokens,
            text=text,
            avg_logprob=sum_lp / (len(tokens) + 1),
            sum_logprob=sum_lp,
            no_speech_prob=no_speech_prob,
            temperature=options.temperature,
            compression_ratio=compression_ratio(text),
            cut=stop.cut,
        )

    # -- model calls ----------------------------------------------------------------
    def _forward(
        self, tokens: np.ndarray, cache: Any | None, positions: list[int] | None = None
    ) -> tuple[np.ndarray, Any]:
        """Logits [B, P, V] as float32 numpy for tokens [B, T], and the extended cache."""
        return self.steps.forward(tokens, cache, positions)

    def _step(self, tokens: list[int], cache: Any) -> tuple[np.ndarray, Any]:
        logits, cache = self._forward(np.array(tokens)[:, None], cache)
        return logits[:, 0], cache

    # -- strategies -----------------------------------------------------------------
    def _sample(
        self,
        first: np.ndarray,
        cache: Any,
        rules: LogitRules,
        options: DecodingOptions,
        sample_len: int,
        n: int,
        stop: _Stop,
    ) -> Steps[tuple[list[int], float]]:
        """Greedy (n = 1, T = 0) or n independent samples at temperature T."""
        eot = self.tokenizer.eot
        if n > 1:
            cache = self.steps.select(cache, [0] * n)
        logits = np.repeat(first[None], n, axis=0)
        seqs: list[list[int]] = [[] for _ in range(n)]
        sum_lp = np.zeros(n, dtype=np.float64)
        done = np.zeros(n, dtype=bool)
        for step in range(sample_len):
            logprobs = rules.apply(logits, seqs)
            if options.temperature == 0:
                picks = logits.argmax(axis=-1)
            else:
                gumbel = self.rng.gumbel(size=logits.shape).astype(np.float32)
                picks = np.argmax(logits / np.float32(options.temperature) + gumbel, axis=-1)
            picks[done] = eot
            sum_lp += np.where(done, 0.0, logprobs[np.arange(n), picks])
            for i in np.flatnonzero(~done):
                if picks[i] != eot:
                    seqs[i].append(int(picks[i]))
            done |= picks == eot
            if stop.check_loops(step):
                for i in np.flatnonzero(~done):
                    done[i] = stop.loops(seqs[i])  # a looping sample ends where it is
            if done.all() or stop.out_of_time():
                break
            logits, cache = self._step([int(t) for t in picks], cache)
            yield
        best = max(range(n), key=lambda i: _rank(float(sum_lp[i]), len(seqs[i]), options))
        return seqs[best], float(sum_lp[best])

    def _beam_search(
        self,
        first: np.ndarray,
        cache: Any,
        rules: LogitRules,
        options: DecodingOptions,
        sample_len: int,
        stop: _Stop,
    ) -> Steps[tuple[list[int], float]]:
        eot = self.tokenizer.eot
        width = options.beam_size
        max_finished = max(1, round(width * options.patience))
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        finished: dict[tuple[int, ...], float] = {}
        logits = first[None]
        for step in range(sample_len):
            logprobs = rules.apply(logits, [seq for seq, _ in beams])
            top = top_k(logprobs, width + 1)
            candidates = [
                (score + float(logprobs[b, t]), b, int(t))
                for b, (_, score) in enumerate(beams)
                for t in top[b]
            ]
            candidates.sort(key=lambda c: -c[0])
            next_beams: list[tuple[list[int], float]] = []
            sources: list[int] = []
            for score, b, token in candidates:
                if not np.isfinite(score):
                    break
                seq = beams[b][0]
                if token == eot:
                    if len(finished) < max_finished:
                        finished.setdefault(tuple(seq), score)
                else:
                    next_beams.append(([*seq, token], score))
                    sources.append(b)
                if len(next_beams) == width:
                    break
            if len(finished) >= max_finished or not next_beams:
                break
            beams = next_beams
            # the best beam looping means the search has settled on a loop
            if (stop.check_loops(step) and stop.loops(beams[0][0])) or stop.out_of_time():
                break
            if sources != list(range(self.steps.batch(cache))):
                cache = self.steps.select(cache, sources)
            logits, cache = self._step([seq[-1] for seq, _ in beams], cache)
            yield
        if len(finished) < max_finished:
            for seq, score in beams:
                finished.setdefault(tuple(seq), score)
        best = max(finished.items(), key=lambda kv: _rank(kv[1], len(kv[0]), options))
        return list(best[0]), best[1]


class _Stop:
    """When one window's decoding ends early: a time limit, or a repetition loop."""

    __slots__ = ("tokenizer", "threshold", "should_stop", "cut")

    def __init__(self, tokenizer: WhisperTokenizer, threshold: float | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.should_stop = should_stop
        self.cut = False

    def out_of_time(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.cut = True
        return self.cut

    def check_loops(self, step: int) -> bool:
        return self.threshold is not None and step % LOOP_CHECK_STEPS == LOOP_CHECK_STEPS - 1

    def loops(self, tokens: list[int]) -> bool:
        assert self.threshold is not None
        return compression_ratio(self.tokenizer.decode(tokens)) > self.threshold


def _rank(sum_logprob: float, length: int, options: DecodingOptions) -> float:
    if options.length_penalty is None:
        penalty = float(max(length, 1))
    else:
        penalty = ((5 + length) / 6) ** options.length_penalty
    return sum_logprob / penalty


def detect_language(
    model: Whisper, tokenizer: WhisperTokenizer, cross_kv: KVCache
) -> tuple[str, dict[str, float]]:
    """Most likely language of the window, and every language's probability."""
    sot = tokenizer.special.sot
    logits, _ = model.decoder(mx.array([[sot]]), cross_kv, None)
    row = np.array(logits[0, -1], dtype=np.float32)
    ids = np.array(tokenizer.special.language_ids)
    lang_logits = row[ids]
    probs = np.exp(log_softmax(lang_logits.astype(np.float64)))
    ranked = {code: float(p) for code, p in zip(tokenizer.languages, probs, strict=False)}
    return tokenizer.languages[int(probs.argmax())], ranked
