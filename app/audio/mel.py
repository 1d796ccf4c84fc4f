"""Whisper's log-mel frontend in numpy: 25 ms Hann frames every 10 ms, Slaney mel bins.

The filterbank is computed here (no librosa): Slaney's mel scale (linear below 1 kHz,
logarithmic above) with area-normalised triangles, which is what Whisper was trained on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop -> 100 frames per second
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # one Whisper window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below the loudest bin (80 dB)
# Frames computed per FFT batch: bounds the complex128 scratch to ~20 MB for any length.
FRAMES_PER_BATCH = 6_000

# Slaney mel scale constants: linear up to 1 kHz, then log-spaced at 27 steps per 6.4x.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_MEL + np.log(np.maximum(hz, 1e-12) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
    return np.where(mel >= _SLANEY_BREAK_MEL, log, linear)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular filters [n_mels, n_fft // 2 + 1], each normalised to unit area (Slaney)."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    top_mel = float(hz_to_mel(np.array(sample_rate / 2)))
    edges_hz = mel_to_hz(np.linspace(0.0, top_mel, n_mels + 2))
    widths = np.diff(edges_hz)
    # distance of every FFT bin from every triangle edge
    offsets = edges_hz[:, None] - fft_hz[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    # periodic Hann (as torch.hann_window), not the symmetric numpy.hanning
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """|STFT|² [n_fft//2+1, frames] with centred, reflect-padded frames (one per hop)."""
    power = np.empty((N_FFT // 2 + 1, _n_frames(audio.size)), dtype=np.float32)
    for rows, block in _power_blocks(_reflect_padded(audio, 0)):
        power[:, rows] = block.T
    return power


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper's normalised log-mel [n_mels, frames] of float32 16 kHz mono `audio`.

    `padding` zero samples are appended first; Whisper appends a full window (N_SAMPLES)
    so the last window of a clip sees real silence features, not edge padding.
    Memory beyond `audio`: one padded copy and the float32 result (~1 GB for 2 h).
    """
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D, got shape {audio.shape}")
    padded = _reflect_padded(audio, padding)
    filters = mel_filters(n_mels)
    mel = np.empty((n_mels, _n_frames(audio.size + padding)), dtype=np.float32)
    for rows, block in _power_blocks(padded):
        mel[:, rows] = filters @ block.T  # never the whole [201, frames] power at once
    del padded
    np.maximum(mel, LOG_FLOOR, out=mel)
    np.log10(mel, out=mel)
    np.maximum(mel, mel.max() - DYNAMIC_RANGE, out=mel)
    mel += 4.0
    mel /= 4.0
    return mel


def _n_frames(n_samples: int) -> int:
    # the last centred frame is dropped, as Whisper's frontend does: len // hop frames
    return max(n_samples, N_FFT // 2 + 1) // HOP_LENGTH


def _reflect_padded(audio: np.ndarray, padding: int) -> np.ndarray:
    """np.pad(audio + `padding` zeros, N_FFT // 2, mode="reflect") as float32, in one
    allocation (a 2 h clip is 460 MB of samples: no extra copies)."""
    half = N_FFT // 2
    n = max(audio.size + padding, half + 1)  # reflect padding needs a few samples
    out = np.zeros(n + 2 * half, dtype=np.float32)
    out[half : half + audio.size] = audio
    body = out[half : half + n]
    out[:half] = body[half:0:-1]
    out[half + n :] = body[-2 : -half - 2 : -1]
    return out


def _power_blocks(padded: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """(frame rows, |STFT|² [rows, n_fft//2+1] float32) of a reflect-padded signal, in
    FRAMES_PER_BATCH blocks."""
    n_frames = (padded.size - 2 * (N_FFT // 2)) // HOP_LENGTH
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    window = _hann_window()
    for start in range(0, n_frames, FRAMES_PER_BATCH):
        spec = np.fft.rfft(frames[start : start + FRAMES_PER_BATCH] * window, axis=-1)
        rows = slice(start, min(start + FRAMES_PER_BATCH, n_frames))
        yield rows, (spec.real**2 + spec.imag**2).astype(np.float32)
