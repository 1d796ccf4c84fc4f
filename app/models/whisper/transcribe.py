"""Long-form transcription as a resumable job, 30 s window by 30 s window.

The engine thread calls step(budget) between chat decode steps; each call works on the
current window (encoder, then decoding with temperature fallback) for about `budget`
seconds and returns the segments a finished window completed, so a streaming response
can emit them right away. A window that loops or hallucinates is bounded: 224 tokens
(half the text context), a loop ends its hypothesis early (compression ratio), and
`TranscribeOptions.window_time_limit` caps its work, retries included.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import mlx.core as mx
import numpy as np

from app.audio.languages import normalize_language
from app.audio.mel import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from app.audio.transcript import (
    TASKS,
    Segment,
    TranscribeOptions,
    TranscriptionResult,
)
from app.models.whisper.decoding import (
    DecodeResult,
    DecodingOptions,
    WindowDecoder,
    compression_ratio,
    detect_language,
)
from app.models.whisper.load import WhisperBundle
from app.models.whisper.steps import Steps
from app.models.whisper.tokenizer import TIME_PRECISION

logger = logging.getLogger(__name__)

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
FRAMES_PER_TOKEN = round(TIME_PRECISION * FRAMES_PER_SECOND)  # one timestamp step = 2 frames
# Past this temperature the text is too random to condition the next window on.
PROMPT_RESET_TEMPERATURE = 0.5
# A window whose loudest sample is below -60 dBFS is inaudible: skip it rather than let
# the model hallucinate ("You" on digital silence, as the reference decoder does too).
SILENCE_PEAK = 1e-3


class TranscriptionJob:
    """Transcribe `audio` (float32 mono 16 kHz) window by window.

    The constructor only computes the log-mel spectrogram (numpy, no MLX), so it may be
    built off the engine thread; step() must run on the thread that owns MLX.
    """

    def __init__(self, bundle: WhisperBundle, audio: np.ndarray, options: TranscribeOptions):
        if options.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {options.task!r}")
        self.bundle = bundle
        self.options = options
        self.tokenizer = bundle.tokenizer
        self.duration = float(len(audio)) / SAMPLE_RATE
        self.language = self._resolve_language(options.language)
        self.task = options.task if bundle.is_multilingual else "transcribe"
        self.mel = log_mel_spectrogram(audio, bundle.n_mels, padding=N_SAMPLES)
        self.frame_peaks = _frame_peaks(audio)
        self.content_frames = self.mel.shape[-1] - N_FRAMES
        self.seek = 0
        self.segments: list[Segment] = []
        self.all_tokens: list[int] = []
        if options.prompt and options.prompt.strip():
            self.all_tokens = self.tokenizer.encode(" " + options.prompt.strip())
        self.prompt_reset_since = 0
        self.rng = np.random.default_rng(options.seed)
        self.windows = 0
        self._window: Steps[list[Segment]] | None = None  # the window in progress
        self._window_spent = 0.0  # seconds of step() spent on it before this slice
        self._slice_start = 0.0
        self._overdue = False  # it ran out of time

    def _resolve_language(self, language: str | None) -> str | None:
        if language is None:
            return None if self.bundle.is_multilingual else "en"
        code = normalize_language(language)
        if code is None:
            raise ValueError(f"unknown language {language!r}")
        if not self.bundle.is_multilingual and code != "en":
            # an English-only model can only write English; say so rather than fail
            logger.warning("model is English-only: ignoring language=%r", language)
            return "en"
        if self.bundle.is_multilingual and code not in self.tokenizer.languages:
            raise ValueError(f"language {language!r} is not supported by this model")
        return code

    @property
    def done(self) -> bool:
        return self.seek >= self.content_frames and self._window is None

    def step(self, budget_s: float | None = None) -> list[Segment]:
        """Work on the next 30 s window: to its end, or with `budget_s` until that much
        time has passed (checked after each half encoder layer and after every decoder
        step, so chat steps can run in between). Returns the segments a finished
        window completed (maybe none)."""
        if self._window is None:
            if self.done:
                return []
            self._window = self._next_window()
            self._window_spent = 0.0
            self._overdue = False
        self._slice_start = time.perf_counter()
        deadline = None if budget_s is None else self._slice_start + budget_s
        try:
            while True:
                next(self._window)
                if deadline is not None and time.perf_counter() >= deadline:
                    return []
        except StopIteration as stop:
            self._window = None
            return stop.value  # type: ignore[no-any-return]
        finally:
            self._window_spent += time.perf_counter() - self._slice_start

    def _out_of_time(self) -> bool:
        """The current window has used up `window_time_limit` (only work time counts,
        not the chat steps run between its slices)."""
        limit = self.options.window_time_limit
        spent = self._window_spent + time.perf_counter() - self._slice_start
        if limit is not None and spent > limit and not self._overdue:
            self._overdue = True
            logger.info("window at %.1f s: out of time (%.1f s of work)",
                        self.seek / FRAMES_PER_SECOND, spent)
        return self._overdue

    def _next_window(self) -> Steps[list[Segment]]:
        model = self.bundle.model
        seek = self.seek
        segment_size = min(N_FRAMES, self.content_frames - seek)
        if self.frame_peaks[seek : seek + segment_size].max(initial=0.0) < SILENCE_PEAK:
            self.seek = seek + segment_size
            self.windows += 1
            return []
        window = np.zeros((self.mel.shape[0], N_FRAMES), dtype=np.float32)
        window[:, :segment_size] = self.mel[:, seek : seek + segment_size]
        cross_kv = yield from model.encode_steps(mx.array(window[None]))
        if self.language is None:
            self.language, _ = detect_language(model, self.tokenizer, cross_kv)
            logger.info("detected language %s", self.language)
        decoder = WindowDecoder(
            model,
            self.tokenizer,
            cross_kv,
            self.tokenizer.sot_sequence(self.language, self.task),
            self.bundle.suppress_tokens,
            self.bundle.begin_suppress_tokens,
            self.rng,
        )
        result, whole = yield from self._decode_with_fallback(decoder)
        new_segments = self._consume(result, seek, segment_size, whole)
        if self.options.word_timestamps and new_segments:
            from app.models.whisper.alignment import add_word_timestamps

            window_end = min(self.duration, (seek + segment_size) / FRAMES_PER_SECOND)
            add_word_timestamps(
                self.bundle, decoder, cross_kv, new_segments, self.language or "en",
                seek / FRAMES_PER_SECOND, window_end,
            )  # fmt: skip
        self.windows += 1
        return new_segments

    def result(self) -> TranscriptionResult:
        text = "".join(s.text for s in self.segments).strip()
        return TranscriptionResult(
            text=text,
            language=self.language or "en",
            duration=round(self.duration, 3),
            segments=list(self.segments),
            task=self.task,
        )

    def run(self) -> TranscriptionResult:
        """Every remaining window in one go (tests, benchmarks, scripts)."""
        while not self.done:
            self.step()
        return self.result()

    # -- internals --------------------------------------------------------------------
    def _decode_with_fallback(self, decoder: WindowDecoder) -> Steps[tuple[DecodeResult, bool]]:
        """The window's result, and whether it stands for the whole window (decoding was
        cut short or a loop was cut off: the rest of the window is not decoded again)."""
        opts = self.options
        prompt = self.all_tokens[self.prompt_reset_since :]
        results: list[DecodeResult] = []
        for temperature in opts.temperatures():
            result = yield from decoder.decode_steps(
                DecodingOptions(
                    temperature=temperature,
                    beam_size=opts.beam_size,
                    best_of=opts.best_of,
                    patience=opts.patience,
                    length_penalty=opts.length_penalty,
                    prompt=prompt,
                    without_timestamps=opts.without_timestamps,
                    suppress_blank=opts.suppress_blank,
                    compression_ratio_threshold=opts.compression_ratio_threshold,
                ),
                self._out_of_time,
            )
            results.append(result)
            too_repetitive = (
                opts.compression_ratio_threshold is not None
                and result.compression_ratio > opts.compression_ratio_threshold
            )
            too_unlikely = (
                opts.logprob_threshold is not None and result.avg_logprob < opts.logprob_threshold
            )
            # as the reference decoder: "no speech" only excuses an unlikely result; a
            # confident loop on noise still falls back
            silence = (
                opts.no_speech_threshold is not None
                and result.no_speech_prob > opts.no_speech_threshold
                and (opts.logprob_threshold is None or too_unlikely)
            )
            if silence or not (too_repetitive or too_unlikely):
                return result, result.cut
            if self._out_of_time():
                break
            logger.debug(
                "window at %d: retrying above T=%.1f (ratio %.2f, logprob %.2f)",
                self.seek, temperature, result.compression_ratio, result.avg_logprob,
            )  # fmt: skip
        # every temperature failed: the most likely result that is not a repetition loop
        threshold = opts.compression_ratio_threshold
        sane = [r for r in results if threshold is None or r.compression_ratio <= threshold]
        best = max(sane or results, key=lambda r: r.avg_logprob)
        if threshold is not None and best.compression_ratio > threshold:
            if opts.no_speech_threshold is not None and \
                    best.no_speech_prob > opts.no_speech_threshold:
                # a loop the model itself doubts is speech: noise, say nothing
                return replace(best, tokens=[], text="", compression_ratio=0.0), True
            return self._cut_loop(best, threshold), True
        return best, best.cut

    def _cut_loop(self, result: DecodeResult, threshold: float) -> DecodeResult:
        """`result` cut to its longest prefix that is not yet a repetition loop."""
        tokens = result.tokens
        lo, hi = 0, len(tokens)  # prefix lo passes the check, hi fails it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if compression_ratio(self.tokenizer.decode(tokens[:mid])) <= threshold:
                lo = mid
            else:
                hi = mid
        text = self.tokenizer.decode(tokens[:lo])
        logger.info("window at %.1f s: cut a repetition loop after %d of %d tokens",
                    self.seek / FRAMES_PER_SECOND, lo, len(tokens))
        return replace(result, tokens=tokens[:lo], text=text,
                       compression_ratio=compression_ratio(text))

    def _consume(self, result: DecodeResult, seek: int, segment_size: int,
                 whole: bool = False) -> list[Segment]:
        """Split the window's tokens into segments and move `seek` past what was used
        (all of the window when `whole`: its tail is not decoded again)."""
        opts = self.options
        silent = (
            opts.no_speech_threshold is not None
            and result.no_speech_prob > opts.no_speech_threshold
            and (opts.logprob_threshold is None or result.avg_logprob < opts.logprob_threshold)
        )
        if silent:
            self.seek = seek + segment_size  # nothing said here
            return []
        tb = self.tokenizer.timestamp_begin
        tokens = result.tokens
        offset = seek / FRAMES_PER_SECOND
        is_ts = [t >= tb for t in tokens]
        # a cut-short result keeps its unfinished last segment, as a clean ending would
        ends_single = whole or (len(tokens) >= 2 and is_ts[-1] and not is_ts[-2])
        # a pair of consecutive timestamps closes one segment and opens the next
        cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
        pieces: list[tuple[float, float, list[int]]] = []
        if cuts:
            bounds = cuts + [len(tokens)] if ends_single else cuts
            last = 0
            for cut in bounds:
                part = tokens[last:cut]
                start = offset + (part[0] - tb) * TIME_PRECISION
                end = offset + (part[-1] - tb) * TIME_PRECISION
                if part[-1] < tb:  # a cut-short tail runs to the window's end
                    end = offset + segment_size / FRAMES_PER_SECOND
                pieces.append((start, end, part))
                last = cut
            # unless the window ended cleanly, resume at the last closing timestamp
            last_ts = (tokens[last - 1] - tb) * FRAMES_PER_TOKEN
            advance = segment_size if ends_single else last_ts
        else:
            window_seconds = segment_size / FRAMES_PER_SECOND
            stamps = [t for t in tokens if t >= tb]
            if stamps and stamps[-1] != tb:
                window_seconds = (stamps[-1] - tb) * TIME_PRECISION
            pieces.append((offset, offset + window_seconds, tokens))
            advance = segment_size
        self.seek = seek + (advance if advance > 0 else segment_size)

        new: list[Segment] = []
        for start, end, part in pieces:
            text = self.tokenizer.decode(part)
            start = min(start, self.duration)
            end = min(max(end, start), self.duration)
            if not text.strip() or end <= start:
                continue  # instantaneous or empty: nothing a subtitle could show
            segment = Segment(
                id=len(self.segments) + len(new),
                seek=seek,
                start=round(start, 3),
                end=round(end, 3),
                text=text,
                tokens=part,
                temperature=result.temperature,
                avg_logprob=result.avg_logprob,
                compression_ratio=result.compression_ratio,
                no_speech_prob=result.no_speech_prob,
            )
            new.append(segment)
        self.segments.extend(new)
        self.all_tokens.extend(t for s in new for t in s.tokens)
        if not opts.condition_on_previous_text or whole or \
                result.temperature > PROMPT_RESET_TEMPERATURE:
            self.prompt_reset_since = len(self.all_tokens)  # don't prompt with a loop
        return new


def _frame_peaks(audio: np.ndarray) -> np.ndarray:
    """Loudest |sample| of every 10 ms mel frame."""
    full = len(audio) // HOP_LENGTH
    peaks = np.zeros(-(-len(audio) // HOP_LENGTH), dtype=np.float32)
    # max and -min of a view: no |audio| copy (460 MB for 2 h)
    body = audio[: full * HOP_LENGTH].reshape(full, HOP_LENGTH)
    peaks[:full] = np.maximum(body.max(axis=1, initial=0.0), -body.min(axis=1, initial=0.0))
    if peaks.size > full:
        peaks[full] = np.abs(audio[full * HOP_LENGTH :]).max()
    return peaks


def transcribe(
    bundle: WhisperBundle, audio: np.ndarray, options: TranscribeOptions | None = None
) -> TranscriptionResult:
    return TranscriptionJob(bundle, audio, options or TranscribeOptions()).run()
