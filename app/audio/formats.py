"""Render a transcription as OpenAI's response formats: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from app.audio.languages import language_name
from app.audio.transcript import Segment, TranscriptionResult, Word

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
GRANULARITIES = ("segment", "word")
DECIMALS = 3  # milliseconds are the finest unit subtitles show


def render(
    result: TranscriptionResult,
    response_format: str = "json",
    timestamp_granularities: Iterable[str] = ("segment",),
) -> tuple[str, str]:
    """(body, media type) of `result` in `response_format`."""
    if response_format not in RESPONSE_FORMATS:
        raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}")
    if response_format == "json":
        body = json.dumps({"text": result.text}, ensure_ascii=False)
    elif response_format == "text":
        body = result.text + "\n"
    elif response_format == "srt":
        body = to_srt(result.segments)
    elif response_format == "vtt":
        body = to_vtt(result.segments)
    else:
        body = json.dumps(verbose_json(result, timestamp_granularities), ensure_ascii=False)
    return body, MEDIA_TYPES[response_format]


def verbose_json(
    result: TranscriptionResult, timestamp_granularities: Iterable[str] = ("segment",)
) -> dict[str, Any]:
    wanted = set(timestamp_granularities) or {"segment"}
    unknown = wanted - set(GRANULARITIES)
    if unknown:
        raise ValueError(f"timestamp_granularities must be among {GRANULARITIES}")
    out: dict[str, Any] = {
        "task": result.task,
        "language": language_name(result.language),
        "duration": round(result.duration, DECIMALS),
        "text": result.text,
    }
    if "segment" in wanted:
        out["segments"] = [segment_dict(s) for s in result.segments]
    if "word" in wanted:
        out["words"] = [word_dict(w) for w in result.words]
    return out


def segment_dict(s: Segment) -> dict[str, Any]:
    return {
        "id": s.id,
        "seek": s.seek,
        "start": round(s.start, DECIMALS),
        "end": round(s.end, DECIMALS),
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": s.temperature,
        "avg_logprob": round(s.avg_logprob, 6),
        "compression_ratio": round(s.compression_ratio, 6),
        "no_speech_prob": round(s.no_speech_prob, 6),
    }


def word_dict(w: Word) -> dict[str, Any]:
    return {
        "word": w.word.strip(),
        "start": round(w.start, DECIMALS),
        "end": round(w.end, DECIMALS),
    }


def to_srt(segments: Iterable[Segment]) -> str:
    blocks = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_cue_text(s.text)}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Iterable[Segment]) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_cue_text(s.text)}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _cue_text(text: str) -> str:
    # an arrow or a blank line inside a cue would end it early in subtitle parsers
    lines = [line.strip() for line in text.strip().replace("-->", "->").splitlines()]
    return "\n".join(line for line in lines if line)
