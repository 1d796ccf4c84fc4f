"""The fields of OpenAI's /v1/audio/transcriptions and /translations forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Task = Literal["transcribe", "translate"]


@dataclass(slots=True)
class TranscriptionParams:
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float | None = None
    granularities: list[str] = field(default_factory=list)
    """timestamp_granularities[]: 'segment' and/or 'word'."""
    stream: bool = False
    task: Task = "transcribe"
