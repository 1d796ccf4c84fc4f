"""A window that loops or hallucinates is bounded: the time limit, the loop check and
the cut-off of a loop that survives every temperature; turns stay short throughout."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from app.audio.transcript import TranscribeOptions
from app.models.whisper.decoding import DecodeResult, compression_ratio
from tests.speech_fixtures import load_whisper_as_served, tiny_en_path

pytestmark = pytest.mark.skipif(tiny_en_path() is None, reason="needs tiny.en")
SAMPLE_RATE = 16_000
SLICE = 0.05
# One turn is SLICE plus the unit that crosses it (<= ~0.12 s here); slack for a busy CPU.
MAX_TURN = 0.4
RATIO = 2.4


@pytest.fixture(scope="module")
def bundle() -> Any:
    return load_whisper_as_served()


def _job(bundle: Any, audio: np.ndarray, **options: Any) -> Any:
    from app.models.whisper import TranscriptionJob

    return TranscriptionJob(bundle, audio, TranscribeOptions(**options))


def test_noise_is_bounded_per_window_in_short_turns(bundle: Any) -> None:
    """Full-scale noise: tiny.en loops ('. . .') at every temperature; 1 s of work per
    window ends it, and no turn runs long."""
    noise = np.random.default_rng(7).uniform(-1, 1, 60 * SAMPLE_RATE).astype("f4")
    job = _job(bundle, noise, window_time_limit=1.0)
    turns = []
    t0 = time.perf_counter()
    while not job.done:
        t = time.perf_counter()
        job.step(SLICE)
        turns.append(time.perf_counter() - t)
    assert time.perf_counter() - t0 < 2 * (1.0 + MAX_TURN)
    assert max(turns) < MAX_TURN, f"longest turn {max(turns):.3f}s"
    assert compression_ratio(job.result().text) <= RATIO, job.result().text[:200]


def test_a_surviving_loop_is_cut_to_its_start(bundle: Any) -> None:
    tok = bundle.tokenizer
    job = _job(bundle, np.zeros(SAMPLE_RATE, "f4"))
    looping = tok.encode(" Hello there, how are you today?") * 30
    text = tok.decode(looping)
    result = DecodeResult(looping, text, -0.1, -3.0, 0.1, 1.0, compression_ratio(text))
    cut = job._cut_loop(result, RATIO)
    assert 0 < len(cut.tokens) < len(looping) and cut.tokens == looping[: len(cut.tokens)]
    assert cut.compression_ratio <= RATIO and "Hello there" in cut.text


def test_a_cut_window_keeps_its_unfinished_segment(bundle: Any) -> None:
    """Cut short mid-segment, the tail is a segment to the window's end and the next
    window starts after this one (the tail is not decoded twice)."""
    tok = bundle.tokenizer
    tb = tok.timestamp_begin
    job = _job(bundle, np.zeros(40 * SAMPLE_RATE, "f4"))
    tokens = [tb, *tok.encode(" First part."), tb + 100, tb + 100, *tok.encode(" Second")]
    result = DecodeResult(tokens, tok.decode(tokens), -0.2, -3.0, 0.0, 0.0, 1.0, cut=True)
    segments = job._consume(result, 0, 3000, whole=True)
    assert [s.text.strip() for s in segments] == ["First part.", "Second"]
    assert segments[1].start == 2.0 and segments[1].end == 30.0 and job.seek == 3000
