"""Word error rate of Whisper tiny.en (CTranslate2 weights, our MLX model) on LibriVox clips.

For scale: faster-whisper on these weights in float32 scored a mean of 7.1%, worst 25%.
"""

from __future__ import annotations

import pytest

from tests.speech_fixtures import (
    LIBRIVOX,
    load_whisper_as_served,
    normalize,
    number_words,
    references,
    tiny_en_path,
    wer,
)

MEAN_WER_MAX = 0.10
CLIP_WER_MAX = 0.30


def test_normalizer() -> None:
    assert normalize("Mr. Dashwood's 21 cold-hearted, ill-disposed!") == (
        ["mister", "dashwoods", "twenty", "one", "cold", "hearted", "ill", "disposed"]
    )
    assert number_words(1995) == "one thousand nine hundred ninety five"
    assert wer(["a", "b", "c", "d"], ["a", "x", "c"]) == pytest.approx(0.5)


@pytest.mark.skipif(tiny_en_path() is None or not LIBRIVOX.exists(), reason="needs fixtures")
def test_tiny_en_wer_on_librivox() -> None:
    from app.audio.decode import decode_audio
    from app.models.whisper import TranscribeOptions
    from app.models.whisper.transcribe import transcribe

    bundle = load_whisper_as_served()
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
