"""Whisper's log-mel frontend: Slaney filterbank, framing, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from app.audio.mel import (
    HOP_LENGTH,
    N_FFT,
    N_SAMPLES,
    SAMPLE_RATE,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filters,
    mel_to_hz,
)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_shape_and_area(n_mels: int) -> None:
    fb = mel_filters(n_mels)
    assert fb.shape == (n_mels, N_FFT // 2 + 1) and fb.dtype == np.float32
    assert (fb >= 0).all() and (fb.sum(axis=1) > 0).all()
    # Slaney normalisation: each triangle has area ~1 in Hz, i.e. height 2 / width
    bin_hz = SAMPLE_RATE / N_FFT
    areas = fb.sum(axis=1) * bin_hz
    assert np.median(areas) == pytest.approx(1.0, rel=0.1)
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()  # centres rise with the bin index


def test_slaney_scale() -> None:
    assert hz_to_mel(np.array(1000.0)) == pytest.approx(15.0)  # linear part ends at 1 kHz
    assert hz_to_mel(np.array(500.0)) == pytest.approx(7.5)
    hz = np.array([0.0, 300.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-9, atol=1e-9)


def test_matches_direct_dft() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(SAMPLE_RATE) * 0.1).astype(np.float32)
    mel = log_mel_spectrogram(audio)
    assert mel.shape == (80, len(audio) // HOP_LENGTH)
    # frame t is centred on sample t * hop, reflect-padded, periodic Hann window
    padded = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(N_FFT)[None, :] / N_FFT)
    power = np.stack(
        [np.abs(dft @ (padded[t * HOP_LENGTH : t * HOP_LENGTH + N_FFT] * window)) ** 2
         for t in range(mel.shape[1])], axis=1,
    )  # fmt: skip
    log_spec = np.log10(np.maximum(mel_filters(80).astype(np.float64) @ power, 1e-10))
    expected = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    np.testing.assert_allclose(mel, expected, atol=2e-4)


def test_tone_lands_in_its_band() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    mel = log_mel_spectrogram((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    band = int(np.median(mel[:, 10:-10].argmax(axis=0)))
    centres = mel_to_hz(np.linspace(0, hz_to_mel(np.array(8000.0)), 82))[1:-1]
    assert abs(centres[band] - 1000) < 60


def test_silence_and_padding() -> None:
    mel = log_mel_spectrogram(np.zeros(SAMPLE_RATE, np.float32), padding=N_SAMPLES)
    assert mel.shape[1] == (SAMPLE_RATE + N_SAMPLES) // HOP_LENGTH
    assert np.allclose(mel, mel[0, 0])  # flat at the floor
