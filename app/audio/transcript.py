"""Plain data shapes of a transcription (options, segments, words, result); no MLX here."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TASKS = ("transcribe", "translate")


@dataclass(slots=True)
class TranscribeOptions:
    language: str | None = None
    """ISO code or English name; None detects it (multilingual models) or means English."""
    task: str = "transcribe"
    """'transcribe' or 'translate' (to English; multilingual models only)."""
    prompt: str | None = None
    """Text that conditions the first window (spelling, names, style)."""
    temperature: float | tuple[float, ...] | None = None
    """None or 0: start greedy/beam and fall back through DEFAULT_TEMPERATURES; a single
    value > 0 samples at just that temperature; a tuple is the fallback schedule."""
    beam_size: int = 5
    """Beams at temperature 0 (1 = greedy)."""
    best_of: int = 5
    """Samples compared at temperature > 0."""
    patience: float = 1.0
    length_penalty: float | None = None
    compression_ratio_threshold: float | None = 2.4
    """Retry hotter when zlib compresses the text better than this (repetition loops)."""
    logprob_threshold: float | None = -1.0
    """Retry hotter when the mean token log-probability is below this."""
    no_speech_threshold: float | None = 0.6
    """A window is silence when P(no speech) is above this and the logprob test failed."""
    condition_on_previous_text: bool = True
    """Feed the previous window's text as the prompt of the next."""
    word_timestamps: bool = False
    """Also align every word to the audio (cross-attention + DTW)."""
    without_timestamps: bool = False
    """Decode text only: one segment per 30 s window."""
    suppress_blank: bool = True
    seed: int = 0
    """Seed of the sampler used by temperature fallback."""
    window_time_limit: float | None = None
    """Seconds of work one 30 s window may take, temperature retries included; past it
    the window keeps its best text so far and the job moves on. None = no limit."""

    def temperatures(self) -> tuple[float, ...]:
        t = self.temperature
        if t is None or (isinstance(t, (int, float)) and t == 0):
            return DEFAULT_TEMPERATURES
        if isinstance(t, (int, float)):
            return (float(t),)
        return tuple(float(x) for x in t) or DEFAULT_TEMPERATURES


@dataclass(slots=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(slots=True)
class Segment:
    id: int
    seek: int
    """Mel frame (10 ms) where this segment's 30 s window starts."""
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None = None


@dataclass(slots=True)
class TranscriptionResult:
    text: str
    language: str
    """ISO code, e.g. 'en'."""
    duration: float
    """Seconds of audio."""
    segments: list[Segment] = field(default_factory=list)
    task: str = "transcribe"

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in (s.words or [])]
