"""decode_audio: every container we accept decodes to the same 16 kHz mono signal; junk fails."""

from __future__ import annotations

import numpy as np
import pytest

from app.audio.decode import SAMPLE_RATE, AudioDecodeError, decode_audio
from tests.audio_encode import encode_audio

TOLERANCE_SECONDS = 0.1  # codec priming/padding (mp3, aac) adds a few ms at the ends


@pytest.fixture(scope="module")
def tone() -> np.ndarray:
    """1.5 s of a 440 Hz tone with a 220 Hz partial, well inside every codec's band."""
    t = np.arange(int(1.5 * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 220 * t)).astype("f4")


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "webm", "m4a"])
def test_formats_decode_to_same_signal(tone: np.ndarray, fmt: str) -> None:
    decoded = decode_audio(encode_audio(tone, fmt))
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(tone)) <= TOLERANCE_SECONDS * SAMPLE_RATE
    # same loudness and same dominant frequency: it is the same sound, not just any sound
    rms = float(np.sqrt(np.mean(decoded**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(tone**2))), rel=0.15)
    spectrum = np.abs(np.fft.rfft(decoded[: len(tone)]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(decoded[: len(tone)])
    assert peak_hz == pytest.approx(440, abs=5)


def test_wav_is_lossless(tone: np.ndarray) -> None:
    decoded = decode_audio(encode_audio(tone, "wav"))
    assert np.abs(decoded - tone).max() < 1e-3  # 16-bit quantisation only


def test_resamples_and_downmixes_to_16k_mono(tone: np.ndarray) -> None:
    import io

    import av

    buf = io.BytesIO()
    rate = 44_100
    stereo = np.stack([tone, tone]).astype("f4")
    stereo = np.stack([np.interp(np.arange(int(1.5 * rate)) / rate, np.arange(len(c)) /
                                 SAMPLE_RATE, c) for c in stereo]).astype("f4")  # fmt: skip
    with av.open(buf, "w", format="wav") as box:
        stream = box.add_stream("pcm_s16le", rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1, order="F"), "flt", "stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    decoded = decode_audio(buf.getvalue())
    assert abs(len(decoded) - len(tone)) <= TOLERANCE_SECONDS * SAMPLE_RATE


def test_max_seconds(tone: np.ndarray) -> None:
    data = encode_audio(tone, "flac")
    assert len(decode_audio(data, max_seconds=2)) == len(tone)
    with pytest.raises(AudioDecodeError, match="longer"):
        decode_audio(data, max_seconds=1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 1000,
        b"this is not audio at all, just text " * 50,
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 20,
    ],
    ids=["empty", "zeros", "text", "random", "pdf"],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(data)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
@pytest.mark.parametrize("keep", [12, 44, 100])
def test_truncated_raises(tone: np.ndarray, fmt: str, keep: int) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(encode_audio(tone, fmt)[:keep])


def test_zero_length_wav_raises() -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(encode_audio(np.zeros(0, "f4"), "wav"))


def test_error_is_value_error_with_message() -> None:
    with pytest.raises(ValueError) as info:
        decode_audio(b"")
    assert isinstance(info.value, AudioDecodeError) and info.value.message
