"""Word timestamps: align text tokens to audio frames through cross-attention.

Some decoder heads ("alignment heads") attend to the audio frame being spoken. Their
attention over one window's text, normalised per frame and smoothed, is a cost matrix;
dynamic time warping finds the monotonic token-to-frame path, and each word starts
where its first token's row of the path starts.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np

from app.audio.transcript import Segment, Word
from app.models.whisper.decoding import WindowDecoder
from app.models.whisper.load import WhisperBundle
from app.models.whisper.tokenizer import TIME_PRECISION

logger = logging.getLogger(__name__)

MEDIAN_FILTER_WIDTH = 7  # frames of smoothing on each head's attention
# Punctuation glued to the neighbouring word instead of getting a time of its own.
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
MAX_WORD_SECONDS_FACTOR = 2.0  # a word longer than this x the median is clipped


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of the last axis (reflect-padded)."""
    if width <= 1 or x.shape[-1] < width // 2 + 1:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path from (0, 0) to (N-1, M-1) through `cost` [N, M].

    Row i's totals have a closed form: D[i, j] = P[j] + min_{k<=j}(A[k] - P[k-1]) with P
    the prefix sums of cost[i] and A[k] = min(D[i-1, k-1], D[i-1, k]), so each row is
    one numpy pass (np.minimum.accumulate) instead of M Python steps.
    """
    n, m = cost.shape
    total = np.full((n, m), np.inf)
    prev = np.full(m + 1, np.inf)  # D[i-1, j-1] for j = 0..M, with D[-1, -1] = 0
    prev[0] = 0.0
    for i in range(n):
        above = np.minimum(prev[:-1], prev[1:])  # best of diagonal / up, per column
        prefix = np.cumsum(cost[i])
        shifted = np.concatenate(([0.0], prefix[:-1]))
        total[i] = prefix + np.minimum.accumulate(above - shifted)
        prev = np.concatenate(([np.inf], total[i]))
    # walk back, preferring the diagonal on ties
    i, j = n - 1, m - 1
    rows, cols = [i], [j]
    while i > 0 or j > 0:
        options = (
            (total[i - 1, j - 1] if i > 0 and j > 0 else np.inf, i - 1, j - 1),
            (total[i - 1, j] if i > 0 else np.inf, i - 1, j),
            (total[i, j - 1] if j > 0 else np.inf, i, j - 1),
        )
        _, i, j = min(options, key=lambda o: o[0])
        rows.append(i)
        cols.append(j)
    return np.array(rows[::-1]), np.array(cols[::-1])


def add_word_timestamps(
    bundle: WhisperBundle,
    decoder: WindowDecoder,
    cross_kv: list[tuple[mx.array, mx.array]],
    segments: list[Segment],
    language: str,
    window_start: float,
    window_end: float,
) -> None:
    """Fill `segments[i].words` for one window's segments, in place."""
    tok = bundle.tokenizer
    text_tokens = [t for s in segments for t in s.tokens if t < tok.eot]
    if not text_tokens:
        return
    prefix = [*decoder.sot_sequence, tok.special.no_timestamps]
    tokens = [*prefix, *text_tokens, tok.eot]
    model = bundle.model
    heads = bundle.alignment_heads
    layers = sorted({layer for layer, _ in heads})
    weights, hidden = model.decoder.alignment_pass(mx.array([tokens]), cross_kv, layers)
    n_audio = max(1, round((window_end - window_start) / TIME_PRECISION))
    # rows that predict each text token and the final eot
    rows = slice(len(prefix) - 1, len(tokens) - 1)
    stack = np.stack(
        [
            np.array(weights[layer][0, head, rows, :n_audio], dtype=np.float32)
            for layer, head in heads
        ]
    )
    mean = stack.mean(axis=-2, keepdims=True)
    std = stack.std(axis=-2, keepdims=True) + 1e-6
    matrix = median_filter((stack - mean) / std, MEDIAN_FILTER_WIDTH).mean(axis=0)
    token_rows, frames = dtw_path(-matrix.astype(np.float64))
    starts_at = np.diff(token_rows, prepend=-1).astype(bool)
    token_times = window_start + frames[starts_at] * TIME_PRECISION  # n_text + 1 times

    probs = _token_probabilities(bundle, hidden[:, rows], text_tokens)
    words = tok.split_words(text_tokens, language)
    bounds = np.cumsum([0] + [len(ids) for _, ids in words])
    timed = [
        Word(
            word=text,
            start=float(token_times[bounds[k]]),
            end=float(token_times[bounds[k + 1]]),
            probability=float(np.mean(probs[bounds[k] : bounds[k + 1]])),
        )
        for k, (text, _) in enumerate(words)
    ]
    _clip_long_words(timed)
    # a word belongs to the segment holding its first token
    seg_ends = np.cumsum([sum(t < tok.eot for t in s.tokens) for s in segments])
    owner = np.searchsorted(seg_ends, bounds[:-1], side="right")
    for index, segment in enumerate(segments):
        mine = [w for w, o in zip(timed, owner, strict=True) if o == index]
        segment.words = _merge_punctuation(mine)
        for w in segment.words:
            w.start = round(min(max(w.start, window_start), window_end), 3)
            w.end = round(min(max(w.end, w.start), window_end), 3)
        if segment.words and segment.words[-1].end > segment.words[0].start:
            # the alignment is finer than the 20 ms timestamp tokens: segments follow it
            segment.start = segment.words[0].start
            segment.end = segment.words[-1].end


def _token_probabilities(
    bundle: WhisperBundle, hidden: mx.array, text_tokens: list[int]
) -> np.ndarray:
    logits = bundle.model.numpy_logits(hidden)[0]
    logits = logits[: len(text_tokens)].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs[np.arange(len(text_tokens)), text_tokens]


def _merge_punctuation(words: list[Word]) -> list[Word]:
    out: list[Word] = []
    carry: Word | None = None
    for w in words:
        stripped = w.word.strip()
        if stripped and all(c in APPEND_PUNCTUATION for c in stripped) and out:
            out[-1].word += w.word  # "word" + "," keeps the word's timing
            continue
        if stripped and all(c in PREPEND_PUNCTUATION for c in stripped):
            carry = w if carry is None else Word(carry.word + w.word, carry.start, w.end, 1.0)
            continue
        if carry is not None:
            w = Word(carry.word + w.word.lstrip(), carry.start, w.end, w.probability)
            carry = None
        out.append(w)
    if carry is not None:
        out.append(carry)
    return out


def _clip_long_words(words: list[Word]) -> None:
    """The attention path can park a word over a pause; cap it near the median length."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    if not durations:
        return
    limit = max(float(np.median(durations)) * MAX_WORD_SECONDS_FACTOR, TIME_PRECISION * 5)
    for w in words:
        if w.end - w.start > limit:
            # sentence-final words run long into the silence after them; starts are reliable
            w.end = w.start + limit
