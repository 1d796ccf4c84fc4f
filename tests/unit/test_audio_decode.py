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


def _pcm_wav(rate: int, seconds: float) -> bytes:
    """A 16-bit mono WAV of a quiet ramp at `rate` Hz (the stdlib writes any rate)."""
    import io
    import wave

    n = max(1, int(rate * seconds))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.arange(n) % 200 - 100).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("rate", [1, 8, 999, 384_001, 1_000_000])
def test_absurd_sample_rates_are_refused(rate: int) -> None:
    """A 1 Hz header would grow 16,000x when resampled: refused before anything is."""
    data = _pcm_wav(rate, 10_000 / rate)  # 10,000 samples: a 20 KB upload
    with pytest.raises(AudioDecodeError, match=f"sample rate {rate} Hz"):
        decode_audio(data)


@pytest.mark.parametrize("rate", [1_000, 8_000, 384_000])
def test_sample_rates_at_the_edges_decode(rate: int) -> None:
    assert len(decode_audio(_pcm_wav(rate, 0.5))) == pytest.approx(8_000, abs=50)


def test_declared_duration_is_refused_before_resampling(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.audio.decode as decode

    def no_resampler(**_: object) -> None:
        raise AssertionError("resampler created for audio declared too long")

    monkeypatch.setattr(decode.av, "AudioResampler", no_resampler)
    with pytest.raises(decode.AudioTooLong, match="declares 10.0 s.*limit of 2 s") as info:
        decode_audio(_pcm_wav(1_000, 10), max_seconds=2)
    assert info.value.limit_seconds == 2 and isinstance(info.value, AudioDecodeError)


def test_undeclared_length_is_capped_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no duration in the header the decoder still stops at the limit: no more than
    the limit is ever resampled (a 1 kHz input frame is 16x its size once resampled)."""
    import app.audio.decode as decode

    appended: list[int] = []
    real_append = decode._append

    def counting_append(chunks: list[np.ndarray], frame: object) -> int:
        appended.append(real_append(chunks, frame))  # type: ignore[arg-type]
        return appended[-1]

    monkeypatch.setattr(decode, "_declared_seconds", lambda box, stream: None)
    monkeypatch.setattr(decode, "_append", counting_append)
    with pytest.raises(decode.AudioTooLong, match="runs past 2 s"):
        decode_audio(_pcm_wav(1_000, 60), max_seconds=2)
    assert 0 < sum(appended) <= 2 * SAMPLE_RATE
    assert len(decode_audio(_pcm_wav(1_000, 1.5), max_seconds=2)) == pytest.approx(
        1.5 * SAMPLE_RATE, abs=50)


def test_no_limit_without_max_seconds() -> None:
    assert len(decode_audio(_pcm_wav(16_000, 5))) == 5 * SAMPLE_RATE
