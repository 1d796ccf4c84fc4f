"""The /v1/responses request body (OpenAI's Responses API). Input items stay plain dicts
here; app/serving/response_items.py turns them into chat messages with errors that name
the item. Unknown fields are kept and logged."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.protocol.body import RequestBody
from app.protocol.chat import MAX_TOP_LOGPROBS

logger = logging.getLogger(__name__)

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Accepted without effect: reasoning is returned in plain text (no encrypted form needed
# to send it back), and no tool here produces sources or images.
INCLUDES_WITHOUT_EFFECT = ("reasoning.encrypted_content",)


class FormatSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: FormatSpec | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    """Accepted; the reply's whole reasoning is returned as reasoning text (no summary)."""


class ResponsesRequest(RequestBody):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    background: bool = False
    # mlxd extensions, as on chat completions
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input must not be an empty list")
        if self.metadata is not None and len(self.metadata) > 16:
            raise ValueError("metadata takes at most 16 keys")
        for key in ("conversation", "prompt", "max_tool_calls"):
            if self.model_extra and self.model_extra.get(key) is not None:
                raise ValueError(f"{key} is not supported by this server")
        if self.model_extra:
            logger.info("ignoring unknown request fields: %s", sorted(self.model_extra))
        return self

    @property
    def logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or []) or bool(self.top_logprobs)
