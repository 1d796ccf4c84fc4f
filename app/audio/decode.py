"""Decode any audio container PyAV (FFmpeg) understands into Whisper's input format.

Output is float32 mono at 16 kHz in [-1, 1]. Decoding happens before the first byte of
the response is sent, so every failure is an `AudioDecodeError` the API turns into a 400.

Resampling can expand a file enormously (a WAV declaring 1 Hz grows 16,000x), so the
length limit is checked on the container's declared duration before anything is
resampled, and on every frame's input length before that frame is resampled: the
decoder never holds more than the limit (plus one frame) of output.
"""

from __future__ import annotations

import io
import logging
from fractions import Fraction

import av
import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# FFmpeg probes the container from these many bytes; more only slows junk rejection.
PROBE_SIZE = 1 << 20
# OpenAI's API rejects clips under 0.1 s too; shorter "audio" is almost always a file
# cut off inside its header (a 100-byte WAV decodes to a few samples).
MIN_SECONDS = 0.1
# Real audio is recorded between telephone-grade 8 kHz and 384 kHz studio masters; a
# rate outside this band is a broken or hostile header (1 Hz expands 16,000x to 16 kHz).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
AV_TIME_BASE = 1_000_000  # container durations are in microseconds


class AudioDecodeError(ValueError):
    """The upload is not audio we can decode (empty, truncated, unknown or unsupported)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AudioTooLong(AudioDecodeError):
    """The audio is longer than the caller's `max_seconds` (declared or decoded)."""

    def __init__(self, message: str, limit_seconds: float) -> None:
        super().__init__(message)
        self.limit_seconds = limit_seconds


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode `data` (wav, mp3, flac, ogg/opus, webm, m4a/aac, ...) to float32 mono 16 kHz.

    `max_seconds` bounds the decoded length: longer input raises `AudioTooLong` rather
    than being cut, so a client never gets a silently partial transcript.
    """
    if not data:
        raise AudioDecodeError("audio file is empty")
    try:
        chunks = _decode(data, max_seconds)
    except AudioDecodeError:
        raise
    except (av.FFmpegError, EOFError, UnicodeDecodeError, ValueError) as exc:
        # PyAV reports junk, truncation and unknown codecs all as FFmpeg errors.
        raise AudioDecodeError(f"could not decode audio: {_describe(exc)}") from exc
    if not chunks:
        raise AudioDecodeError("audio file has no samples (truncated or zero-length)")
    audio = np.concatenate(chunks)
    if audio.size < MIN_SECONDS * SAMPLE_RATE:
        raise AudioDecodeError(
            f"audio is too short ({audio.size / SAMPLE_RATE:.3f} s; minimum {MIN_SECONDS} s):"
            " truncated or zero-length"
        )
    if not np.isfinite(audio).all():
        raise AudioDecodeError("audio contains non-finite samples")
    return audio


def _decode(data: bytes, max_seconds: float | None) -> list[np.ndarray]:
    options = {"probesize": str(PROBE_SIZE)}
    with av.open(io.BytesIO(data), mode="r", options=options, metadata_errors="ignore") as box:
        if not box.streams.audio:
            raise AudioDecodeError("file has no audio stream")
        stream = box.streams.audio[0]
        if stream.codec_context is None:
            raise AudioDecodeError("unsupported audio codec")
        _check_rate(stream.codec_context.sample_rate)
        declared = _declared_seconds(box, stream)
        if max_seconds is not None and declared is not None and declared > max_seconds:
            raise _too_long(f"audio declares {declared:.1f} s", max_seconds)
        max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        seconds_in = 0.0  # input decoded so far, counted before it is resampled
        for frame in box.decode(stream):
            if not frame.sample_rate:
                raise AudioDecodeError("audio frame has no sample rate")
            _check_rate(frame.sample_rate)
            seconds_in += frame.samples / frame.sample_rate
            if max_seconds is not None and seconds_in > max_seconds:
                raise _too_long(f"audio runs past {max_seconds:g} s", max_seconds)
            for out in resampler.resample(frame):
                total += _append(chunks, out)
            if max_samples is not None and total > max_samples:
                raise _too_long(f"audio runs past {max_seconds:g} s", max_seconds or 0.0)
        for out in resampler.resample(None):  # flush the resampler's tail
            total += _append(chunks, out)
        if max_samples is not None and total > max_samples:
            raise _too_long(f"audio runs past {max_seconds:g} s", max_seconds or 0.0)
        return chunks


def _check_rate(rate: int | None) -> None:
    # None or 0: the codec has not said yet; the frames' own rates are checked as they come
    if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}-"
            f"{MAX_SAMPLE_RATE} Hz"
        )


def _declared_seconds(box: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The audio stream's duration as the container states it (else the container's own);
    None when neither says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * Fraction(stream.time_base))
    if box.duration is not None:
        return box.duration / AV_TIME_BASE
    return None


def _too_long(what: str, limit: float) -> AudioTooLong:
    return AudioTooLong(f"{what}, longer than the limit of {limit:g} s", limit)


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    chunks.append(samples)
    return int(samples.size)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
