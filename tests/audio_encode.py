"""Encode float32 mono audio into a container with PyAV (tests, fixtures, round trips)."""

from __future__ import annotations

import io
import logging

import av
import numpy as np

from app.audio.decode import SAMPLE_RATE

logger = logging.getLogger(__name__)

# container format -> (codec, sample rate the codec accepts, sample format, bit rate)
FORMATS: dict[str, tuple[str, int, str, int | None]] = {
    "wav": ("pcm_s16le", SAMPLE_RATE, "s16", None),
    "flac": ("flac", SAMPLE_RATE, "s16", None),
    "mp3": ("libmp3lame", SAMPLE_RATE, "s16p", 64_000),
    "ogg": ("libopus", 48_000, "flt", 48_000),  # Opus in Ogg; Opus runs at 48 kHz
    "webm": ("libopus", 48_000, "flt", 48_000),
    "m4a": ("aac", SAMPLE_RATE, "fltp", 64_000),
}
_CONTAINER = {"m4a": "ipod"}  # FFmpeg's muxer name for .m4a


def encode_audio(audio: np.ndarray, fmt: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """`audio` (float32 mono in [-1, 1] at `sample_rate`) as a `fmt` file's bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}")
    codec, rate, sample_fmt, bit_rate = FORMATS[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=_CONTAINER.get(fmt, fmt)) as box:
        stream = box.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        if bit_rate:
            stream.bit_rate = bit_rate
        if audio.size:  # a zero-length file is just the container's header
            resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=rate)
            frame = av.AudioFrame.from_ndarray(
                np.clip(audio, -1, 1).astype(np.float32)[None], format="flt", layout="mono"
            )
            frame.sample_rate = sample_rate
            for resampled in resampler.resample(frame) + resampler.resample(None):
                for packet in stream.encode(resampled):
                    box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return buf.getvalue()
