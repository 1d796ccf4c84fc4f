"""The fields of OpenAI's /v1/audio/transcriptions and /translations forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.protocol.body import text_problem
from app.protocol.errors import APIError

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

    def __post_init__(self) -> None:
        # A form's charset may be one (utf-7) that decodes to lone surrogates: the JSON
        # bodies' check (app/protocol/body.py), for the form's text fields.
        texts = [("model", self.model), ("language", self.language), ("prompt", self.prompt),
                 ("response_format", self.response_format),
                 *(("timestamp_granularities[]", g) for g in self.granularities)]
        for param, text in texts:
            if text is not None and (problem := text_problem(text)) is not None:
                raise APIError(400, f"'{param}' {problem}", param=param)
