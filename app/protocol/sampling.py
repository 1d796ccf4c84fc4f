"""Fields every generation request shares (chat and legacy completions): sampling,
stopping, streaming. Unknown fields are kept and logged."""

from __future__ import annotations

import logging
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.protocol.body import RequestBody

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 16
MAX_N = 16
# ASCII digits only: str.isdigit() admits "²", which int() refuses; 20 digits hold any id
TOKEN_ID = re.compile(r"-?[0-9]{1,20}")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class GenerationFields(RequestBody):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    """OpenAI's int64, or any uint64."""
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256)
    """vLLM's extension: the prompt's KV prefix is reused only by requests that send the
    same salt (and, with API keys on, the same key)."""

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, val in (v or {}).items():
            if not TOKEN_ID.fullmatch(key):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= val <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {val}")
        return v

    @model_validator(mode="after")
    def _log_unknown(self) -> GenerationFields:
        if self.model_extra:
            logger.info("ignoring unknown request fields: %s", sorted(self.model_extra))
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
