"""Decode one 30 s window: greedy, sampled (best-of-n) or beam search, with Whisper's
timestamp rules and token suppression applied to the logits in numpy.

The window's cross-attention K/V is computed once by the caller and shared by every
beam, sample and temperature retry.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from app.models.whisper import cpu_ops
from app.models.whisper.cpu_decoder import SelfKV
from app.models.whisper.model import Whisper
from app.models.whisper.steps import Steps, run_to_end
from app.models.whisper.tokenizer import TIME_PRECISION, WhisperTokenizer

logger = logging.getLogger(__name__)

NEG_INF = np.float32(-np.inf)
MAX_INITIAL_TIMESTAMP = 1.0  # seconds: the first timestamp may not start later than this
# log-prob distances below a row's best where beam candidates are looked for first
TOP_K_MARGINS = (4.0, 8.0, 16.0, 32.0)

KVCache = list[tuple[mx.array, mx.array]]
# the MLX decoder's per-layer (K, V), or the numpy decoder's buffers (CPU)
SelfCache = KVCache | SelfKV


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


def compression_ratio(text: str) -> float:
    """How well zlib squeezes `text`: repeated loops (hallucinations) score above ~2.4."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


class LogitRules:
    """Suppression and timestamp rules of Whisper's decoder, applied in place per row."""

    def __init__(
        self,
        tokenizer: WhisperTokenizer,
        n_vocab: int,
        suppress_tokens: list[int],
        begin_suppress_tokens: list[int],
        options: DecodingOptions,
    ) -> None:
        s = tokenizer.special
        self.eot = s.eot
        self.tb = s.timestamp_begin
        self.no_timestamps = s.no_timestamps
        self.timestamps = not options.without_timestamps
        self.suppress = np.array(sorted(set(suppress_tokens)), dtype=np.int64)
        self.begin = np.array(begin_suppress_tokens if options.suppress_blank else [], np.int64)
        self.max_initial = (
            None
            if options.max_initial_timestamp is None
            else self.tb + round(options.max_initial_timestamp / TIME_PRECISION)
        )
        self.n_vocab = n_vocab

    def apply(self, logits: np.ndarray, seqs: list[list[int]]) -> np.ndarray:
        """Mask `logits` [B, V] in place given each row's tokens sampled so far in this
        window; returns the rows' log-probabilities after masking."""
        tb = self.tb
        for i, seq in enumerate(seqs):
            if not seq and self.begin.size:
                logits[i, self.begin] = NEG_INF
        logits[:, self.suppress] = NEG_INF
        if not self.timestamps:
            logits[:, tb:] = NEG_INF
            return log_softmax(logits)
        logits[:, self.no_timestamps] = NEG_INF
        for i, seq in enumerate(seqs):
            self._timestamp_rules(logits[i], seq)
        logprobs = log_softmax(logits)
        # when timestamps together outweigh every single text token, force a timestamp
        ts_mass = logsumexp(logprobs[:, tb:])
        force = ts_mass > logprobs[:, :tb].max(axis=-1)
        if force.any():
            logits[force, :tb] = NEG_INF
            logprobs[force] = log_softmax(logits[force])
        return logprobs

    def _timestamp_rules(self, row: np.ndarray, seq: list[int]) -> None:
        tb = self.tb
        last_ts = len(seq) >= 1 and seq[-1] >= tb
        penultimate_ts = len(seq) < 2 or seq[-2] >= tb
        if last_ts:
            # timestamps come in pairs (end, next start), except right before eot
            if penultimate_ts:
                row[tb:] = NEG_INF
            else:
                row[: self.eot] = NEG_INF
        last_time = next((t for t in reversed(seq) if t >= tb), None)
        if last_time is not None:
            # time never goes back; a closing timestamp may equal the opening one
            floor = last_time if (last_ts and not penultimate_ts) else last_time + 1
            row[tb:floor] = NEG_INF
        if not seq:
            row[:tb] = NEG_INF  # a window opens with a timestamp
            if self.max_initial is not None:
                row[self.max_initial + 1 :] = NEG_INF


def top_k(logprobs: np.ndarray, k: int) -> list[np.ndarray]:
    """Indices of each row's k largest values (unordered).

    argpartition over 52k columns took 0.5 ms a row; almost all of a row's mass sits
    within TOP_K_MARGINS of its max, so the k best are found among those few columns,
    exactly, whenever at least k of them are there (else the full partition runs).
    """
    out = []
    for row in logprobs:
        best = row.max()
        for margin in TOP_K_MARGINS:
            cols = np.flatnonzero(row >= best - margin)
            if len(cols) >= k:
                break
        else:
            cols = np.flatnonzero(row > NEG_INF)  # masked (-inf) tokens never qualify
        out.append(cols[np.argpartition(-row[cols], k - 1)[:k]] if len(cols) > k else cols)
    return out


def logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis; -inf for rows that are all -inf."""
    m = x.max(axis=-1, keepdims=True)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(x - safe).sum(axis=-1, keepdims=True)) + safe)[..., 0]


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - logsumexp(x)[..., None].astype(x.dtype)


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
        # CPU decode steps run in numpy (cpu_decoder.py); the MLX decoder elsewhere
        self.cpu = model.cpu_decoder() if cpu_ops.use_numpy_kernels() else None
        self.cpu_cross = self.cpu.cross(cross_kv) if self.cpu is not None else None

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

    def decode_steps(self, options: DecodingOptions) -> Steps[DecodeResult]:
        """`decode` as a generator that yields after every decoder step, so the engine
        can run chat steps in between; returns the result."""
        initial = self.initial_tokens(options)
        n_ctx = self.model.dims.n_text_ctx
        sample_len = options.sample_len or n_ctx // 2
        sample_len = max(1, min(sample_len, n_ctx - len(initial)))
        rules = LogitRules(
            self.tokenizer,
            self.model.dims.n_vocab,
            self.suppress_tokens,
            self.begin_suppress_tokens,
            options,
        )
        sot_index = initial.index(self.tokenizer.special.sot)
        logits, cache = self._forward(np.array([initial]), None, [sot_index, len(initial) - 1])
        first = logits[0]
        no_speech_prob = float(
            np.exp(log_softmax(first[0].astype(np.float64))[self.tokenizer.special.no_speech])
        )
        if options.temperature == 0 and options.beam_size > 1:
            tokens, sum_lp = yield from self._beam_search(
                first[1], cache, rules, options, sample_len)
        else:
            n = 1 if options.temperature == 0 else max(1, options.best_of)
            tokens, sum_lp = yield from self._sample(
                first[1], cache, rules, options, sample_len, n)
        text = self.tokenizer.decode(tokens)
        return DecodeResult(
            tokens=tokens,
            text=text,
            avg_logprob=sum_lp / (len(tokens) + 1),
            sum_logprob=sum_lp,
            no_speech_prob=no_speech_prob,
            temperature=options.temperature,
            compression_ratio=compression_ratio(text),
        )

    # -- model calls ----------------------------------------------------------------
    def _forward(
        self, tokens: np.ndarray, cache: SelfCache | None, positions: list[int] | None = None
    ) -> tuple[np.ndarray, SelfCache]:
        """Logits [B, P, V] as float32 numpy for tokens [B, T], and the extended cache."""
        if self.cpu is not None and self.cpu_cross is not None:
            if not isinstance(cache, SelfKV):
                cache = self.cpu.empty_cache(tokens.shape[0])
            return self.cpu.logits(tokens, self.cpu_cross, cache, positions), cache
        assert not isinstance(cache, SelfKV)
        hidden, new_cache = self.model.decoder.hidden(
            mx.array(tokens), self.cross_kv, cache, positions)
        if cpu_ops.use_numpy_kernels():
            mx.eval(hidden, new_cache)
            logits = self.model.projection()(hidden).reshape(*hidden.shape[:2], -1)
        else:
            out = self.model.decoder.logits(hidden)
            mx.eval(out, new_cache)
            logits = np.array(out, dtype=np.float32)
        return logits, new_cache

    def _step(self, tokens: list[int], cache: SelfCache) -> tuple[np.ndarray, SelfCache]:
        logits, cache = self._forward(np.array(tokens)[:, None], cache)
        return logits[:, 0], cache

    # -- strategies -----------------------------------------------------------------
    def _sample(
        self,
        first: np.ndarray,
        cache: SelfCache,
        rules: LogitRules,
        options: DecodingOptions,
        sample_len: int,
        n: int,
    ) -> Steps[tuple[list[int], float]]:
        """Greedy (n = 1, T = 0) or n independent samples at temperature T."""
        eot = self.tokenizer.eot
        if n > 1:
            cache = _select(cache, [0] * n)
        logits = np.repeat(first[None], n, axis=0)
        seqs: list[list[int]] = [[] for _ in range(n)]
        sum_lp = np.zeros(n, dtype=np.float64)
        done = np.zeros(n, dtype=bool)
        for _ in range(sample_len):
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
            if done.all():
                break
            logits, cache = self._step([int(t) for t in picks], cache)
            yield
        best = max(range(n), key=lambda i: _rank(float(sum_lp[i]), len(seqs[i]), options))
        return seqs[best], float(sum_lp[best])

    def _beam_search(
        self,
        first: np.ndarray,
        cache: SelfCache,
        rules: LogitRules,
        options: DecodingOptions,
        sample_len: int,
    ) -> Steps[tuple[list[int], float]]:
        eot = self.tokenizer.eot
        width = options.beam_size
        max_finished = max(1, round(width * options.patience))
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        finished: dict[tuple[int, ...], float] = {}
        logits = first[None]
        for _ in range(sample_len):
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
            if sources != list(range(_batch(cache))):
                cache = _select(cache, sources)
            logits, cache = self._step([seq[-1] for seq, _ in beams], cache)
            yield
        if len(finished) < max_finished:
            for seq, score in beams:
                finished.setdefault(tuple(seq), score)
        best = max(finished.items(), key=lambda kv: _rank(kv[1], len(kv[0]), options))
        return list(best[0]), best[1]


def _batch(cache: SelfCache) -> int:
    return cache.batch if isinstance(cache, SelfKV) else cache[0][0].shape[0]


def _select(cache: SelfCache, rows: list[int]) -> SelfCache:
    """The cache of rows `rows` (beam reordering, or one row repeated into samples)."""
    if isinstance(cache, SelfKV):
        return cache.select(rows)
    index = mx.array(rows)
    return [(k[index], v[index]) for k, v in cache]


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
