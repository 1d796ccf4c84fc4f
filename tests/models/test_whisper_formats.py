"""Response formats of a real multi-window transcription, the job's step() contract, and
the same clip through lossy codecs."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from app.audio.decode import SAMPLE_RATE, decode_audio
from app.audio.formats import RESPONSE_FORMATS, render, to_srt, to_vtt
from app.audio.transcript import Segment, TranscribeOptions, TranscriptionResult
from tests.audio_encode import encode_audio
from tests.speech_fixtures import LIBRIVOX, load_whisper_as_served, normalize, tiny_en_path

pytestmark = pytest.mark.skipif(
    tiny_en_path() is None or not LIBRIVOX.exists(), reason="needs tiny.en and LibriVox clips"
)
CLIP = "sense_and_sensibility_01_austen_64kb-0870.wav"


@pytest.fixture(scope="module")
def bundle() -> Any:
    return load_whisper_as_served()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [decode_audio(p.read_bytes()) for p in sorted(LIBRIVOX.glob("*.wav"))]


@pytest.fixture(scope="module")
def long_run(
    bundle: Any, clips: list[np.ndarray]
) -> tuple[TranscriptionResult, list[list[Segment]]]:
    """All clips twice with 1.5 s gaps (~64 s, three windows), step by step."""
    from app.models.whisper import TranscriptionJob

    gap = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([part for clip in clips * 2 for part in (clip, gap)])
    job = TranscriptionJob(bundle, audio, TranscribeOptions())
    steps = []
    while not job.done:
        steps.append(job.step())
    assert job.step() == []  # finished jobs do nothing
    return job.result(), steps


def test_steps_yield_every_segment_once(long_run: Any, clips: list[np.ndarray]) -> None:
    result, steps = long_run
    assert len(steps) >= 2  # more than one 30 s window
    assert [s for step in steps for s in step] == result.segments
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    expected = (2 * sum(len(c) for c in clips) / SAMPLE_RATE) + 10 * 1.5
    assert result.duration == pytest.approx(expected, abs=0.01)
    assert result.language == "en"
    assert result.text == "".join(s.text for s in result.segments).strip()
    words = normalize(result.text)
    assert words.count("dashwood") == 2 and words.count("amiable") >= 4


def test_json_and_text(long_run: Any) -> None:
    result, _ = long_run
    body, media = render(result, "json")
    assert media == "application/json" and json.loads(body) == {"text": result.text}
    body, media = render(result, "text")
    assert media.startswith("text/plain") and body.strip() == result.text


def _check_times(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans
    for (start, end), (next_start, _) in zip(spans, spans[1:] + [(duration, 0)], strict=True):
        assert 0 <= start < end <= duration + 1e-6
        assert end <= next_start + 1e-6  # monotonic, no overlap


def _parse_clock(text: str) -> float:
    h, m, s, ms = re.fullmatch(r"(\d+):(\d\d):(\d\d)[.,](\d{3})", text).groups()  # type: ignore[union-attr]
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_srt(long_run: Any) -> None:
    result, _ = long_run
    body, media = render(result, "srt")
    assert media.startswith("application/x-subrip")
    blocks = body.strip().split("\n\n")
    assert len(blocks) == len(result.segments)
    spans = []
    for i, block in enumerate(blocks, start=1):
        index, times, *text = block.split("\n")
        assert int(index) == i and text and all(line.strip() for line in text)
        start, end = times.split(" --> ")
        assert "," in start and "," in end
        spans.append((_parse_clock(start), _parse_clock(end)))
    _check_times(spans, result.duration)


def test_vtt(long_run: Any) -> None:
    result, _ = long_run
    body, media = render(result, "vtt")
    assert media.startswith("text/vtt")
    header, *cues = body.strip().split("\n\n")
    assert header == "WEBVTT" and len(cues) == len(result.segments)
    spans = []
    for cue in cues:
        times, *text = cue.split("\n")
        start, end = times.split(" --> ")
        assert "." in start and text
        spans.append((_parse_clock(start), _parse_clock(end)))
    _check_times(spans, result.duration)


def test_verbose_json(long_run: Any, bundle: Any) -> None:
    result, _ = long_run
    data = json.loads(render(result, "verbose_json")[0])
    assert data["task"] == "transcribe" and data["language"] == "english"
    assert data["duration"] == pytest.approx(result.duration) and data["text"] == result.text
    assert "words" not in data
    keys = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
            "compression_ratio", "no_speech_prob"}  # fmt: skip
    for seg in data["segments"]:
        assert set(seg) == keys
        assert bundle.tokenizer.decode(seg["tokens"]) == seg["text"]
        assert -5 < seg["avg_logprob"] <= 0 and 0 <= seg["no_speech_prob"] <= 1
        assert 0 <= seg["seek"] <= result.duration * 100
    _check_times([(s["start"], s["end"]) for s in data["segments"]], result.duration)


def test_every_format_renders(long_run: Any) -> None:
    result, _ = long_run
    for fmt in RESPONSE_FORMATS:
        body, media = render(result, fmt)
        assert body and media
    with pytest.raises(ValueError):
        render(result, "docx")


def test_subtitle_text_is_safe() -> None:
    seg = Segment(0, 0, 3661.5, 3662.0, " a --> b\n\n c", [], 0.0, -0.1, 1.0, 0.0)
    assert to_srt([seg]) == "1\n01:01:01,500 --> 01:01:02,000\na -> b\nc\n"
    assert to_vtt([seg]) == "WEBVTT\n\n01:01:01.500 --> 01:01:02.000\na -> b\nc\n"


@pytest.fixture(scope="module")
def wav_text(bundle: Any) -> str:
    from app.models.whisper.transcribe import transcribe

    return transcribe(bundle, decode_audio((LIBRIVOX / CLIP).read_bytes())).text


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
def test_lossy_copies_transcribe_alike(bundle: Any, wav_text: str, fmt: str) -> None:
    from app.models.whisper.transcribe import transcribe

    copy = decode_audio(encode_audio(decode_audio((LIBRIVOX / CLIP).read_bytes()), fmt))
    assert normalize(transcribe(bundle, copy).text) == normalize(wav_text)


def test_prompt_and_options(bundle: Any, clips: list[np.ndarray]) -> None:
    from app.models.whisper import TranscriptionJob

    greedy = TranscriptionJob(bundle, clips[0], TranscribeOptions(beam_size=1, prompt="Dashwood."))
    text = greedy.run().text
    assert "Dashwood" in text
    plain = TranscriptionJob(bundle, clips[0], TranscribeOptions(without_timestamps=True)).run()
    assert len(plain.segments) == 1 and normalize(plain.text) == normalize(text)
    with pytest.raises(ValueError):
        TranscriptionJob(bundle, clips[0], TranscribeOptions(task="summarize"))
    with pytest.raises(ValueError):
        TranscriptionJob(bundle, clips[0], TranscribeOptions(language="klingon"))


def test_silence_gives_no_segments(bundle: Any) -> None:
    from app.models.whisper.transcribe import transcribe

    for silence in (np.zeros(5 * SAMPLE_RATE, np.float32), np.full(SAMPLE_RATE, 1e-4, np.float32)):
        result = transcribe(bundle, silence)
        assert result.text == "" and result.segments == []
        assert result.duration == pytest.approx(len(silence) / SAMPLE_RATE)


def test_word_timestamps(bundle: Any, clips: list[np.ndarray]) -> None:
    from app.models.whisper import TranscriptionJob

    audio = np.concatenate(clips[:2])
    result = TranscriptionJob(bundle, audio, TranscribeOptions(word_timestamps=True)).run()
    words = result.words
    assert normalize("".join(w.word for w in words)) == normalize(result.text)
    previous_end = 0.0
    for w in words:
        assert previous_end - 1e-6 <= w.start <= w.end <= result.duration
        assert 0 <= w.probability <= 1
        previous_end = w.end
    # "John" is spoken about 0.9 s in and "young man" ends the second clip (7.1 + 3.0 s)
    john = next(w for w in words if "John" in w.word)
    assert 0.6 <= john.start <= 1.2
    assert words[-1].end == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.8)
    data = json.loads(render(result, "verbose_json", ["word", "segment"])[0])
    assert len(data["words"]) == len(words) and set(data["words"][0]) == {"word", "start", "end"}
    assert "segments" not in json.loads(render(result, "verbose_json", ["word"])[0])


def test_sliced_steps_give_the_same_transcript(bundle: Any, clips: list[np.ndarray]) -> None:
    """With a time budget a window is worked on over several step() calls (the engine
    runs chat steps in between); the transcript is the same as window by window."""
    from app.models.whisper import TranscriptionJob

    audio = np.concatenate([clips[0], clips[1]])
    whole = TranscriptionJob(bundle, audio, TranscribeOptions())
    whole_segments = []
    while not whole.done:
        whole_segments += whole.step()
    sliced = TranscriptionJob(bundle, audio, TranscribeOptions())
    calls, empty, segments = 0, 0, []
    while not sliced.done:
        got = sliced.step(budget_s=0.0)  # stop at every yield point
        calls += 1
        empty += not got
        segments += got
    assert [s.text for s in segments] == [s.text for s in whole_segments]
    assert sliced.windows == whole.windows
    assert calls > 10 * sliced.windows and empty >= calls - sliced.windows
