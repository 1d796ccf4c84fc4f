"""Whisper speech-to-text on MLX: loaders (CTranslate2, Hugging Face), decoding, jobs.

The data types import without MLX; the loader and job classes import MLX on first use,
so the HTTP layer can depend on this package without touching the engine's runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.audio.transcript import (
    Segment,
    TranscribeOptions,
    TranscriptionResult,
    Word,
)

if TYPE_CHECKING:
    from app.models.whisper.load import WhisperBundle, load_whisper
    from app.models.whisper.transcribe import TranscriptionJob, transcribe

__all__ = [
    "Segment",
    "TranscribeOptions",
    "TranscriptionJob",
    "TranscriptionResult",
    "WhisperBundle",
    "Word",
    "load_whisper",
    "transcribe",
]

_LAZY = {
    "WhisperBundle": "app.models.whisper.load",
    "load_whisper": "app.models.whisper.load",
    "TranscriptionJob": "app.models.whisper.transcribe",
    "transcribe": "app.models.whisper.transcribe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
