"""Decode any audio container PyAV (FFmpeg) understands into Whisper's input format.

Output is float32 mono at 16 kHz in [-1, 1]. Decoding happens before the first byte of
the response is sent, so every failure is an `AudioDecodeError` the API turns into a 400.
"""

from __future__ import annotations

import io
import logging

import av
import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# FFmpeg probes the container from these many bytes; more only slows junk rejection.
PROBE_SIZE = 1 << 20
# OpenAI's API rejects clips under 0.1 s too; shorter "audio" is almost always a file
# cut off inside its header (a 100-byte WAV decodes to a few samples).
MIN_SECONDS = 0.1


class AudioDecodeError(ValueError):
    """The upload is not audio we can decode (empty, truncated, unknown or unsupported)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> np.ndarray:
    """Decode `data` (wav, mp3, flac, ogg/opus, webm, m4a/aac, ...) to float32 mono 16 kHz.

    `max_seconds` bounds the decoded length: longer input raises rather than being cut,
    so a client never gets a silently partial transcript.
    """
    if not data:
        raise AudioDecodeError("audio file is empty")
    max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    try:
        chunks = _decode(data, max_samples)
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


def _decode(data: bytes, max_samples: int | None) -> list[np.ndarray]:
    options = {"probesize": str(PROBE_SIZE)}
    with av.open(io.BytesIO(data), mode="r", options=options, metadata_errors="ignore") as box:
        if not box.streams.audio:
            raise AudioDecodeError("file has no audio stream")
        stream = box.streams.audio[0]
        if stream.codec_context is None:
            raise AudioDecodeError("unsupported audio codec")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        for frame in box.decode(stream):
            for out in resampler.resample(frame):
                total += _append(chunks, out)
            if max_samples is not None and total > max_samples:
                raise AudioDecodeError(
                    f"audio is longer than the limit of {max_samples / SAMPLE_RATE:g} s"
                )
        for out in resampler.resample(None):  # flush the resampler's tail
            total += _append(chunks, out)
        if max_samples is not None and total > max_samples:
            raise AudioDecodeError(
                f"audio is longer than the limit of {max_samples / SAMPLE_RATE:g} s"
            )
        return chunks


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    chunks.append(samples)
    return int(samples.size)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
