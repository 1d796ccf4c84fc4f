"""The /v1/embeddings request body (OpenAI's shape)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from app.protocol.body import RequestBody

logger = logging.getLogger(__name__)

MAX_INPUTS = 2048  # OpenAI's limit on inputs in one request


class EmbeddingRequest(RequestBody):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    """Text, texts, one token array or token arrays (ids of the model's own vocabulary,
    without special tokens: they embed exactly as the text they encode)."""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> EmbeddingRequest:
        if isinstance(self.input, list):
            if not self.input:
                raise ValueError("input must not be an empty list")
            if len(self.input) > MAX_INPUTS and not isinstance(self.input[0], int):
                raise ValueError(f"at most {MAX_INPUTS} inputs in one request")
        if self.model_extra:
            logger.info("ignoring unknown request fields: %s", sorted(self.model_extra))
        return self

    def items(self) -> list[str] | list[list[int]]:
        """The inputs as a list: texts, or token arrays."""
        inp = self.input
        if isinstance(inp, str):
            return [inp]
        if inp and isinstance(inp[0], int):
            return [inp]  # type: ignore[list-item]
        return inp  # type: ignore[return-value]
