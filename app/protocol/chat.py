"""Request bodies at the HTTP boundary (pydantic). Unknown fields are kept and logged."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.protocol.sampling import GenerationFields

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
# What the server itself passes to the chat template: chat_template_kwargs may not set them
RESERVED_TEMPLATE_VARIABLES = ("messages", "add_generation_prompt", "tools", "bos_token",
                               "eos_token", "tokenize")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str = "{}"
    """A JSON object, as text (OpenAI's shape)."""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    """Assistant messages: the calls it made (sent back with the conversation)."""
    tool_call_id: str | None = None
    """Tool messages: which call this is the result of."""

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content part type {part.type!r} is not supported (text only)")
            out.append(part.text)
        return "".join(out)


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    """An empty schema admits any JSON value."""
    strict: bool | None = None
    """Accepted either way: the schema is always enforced (constrained decoding)."""


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema of the arguments object."""
    strict: bool | None = None
    """Enforced where the call is forced (tool_choice required or named); with "auto" the
    arguments are parsed, not constrained (README, "Tool calls and reasoning")."""


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat,
                           Field(discriminator="type")]


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    prompt_cache_key: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    """Passed to the chat template as `reasoning_effort` (templates that take it)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Variables for the chat template, e.g. {"enable_thinking": false} for Qwen3."""
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @field_validator("chat_template_kwargs")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        reserved = sorted(set(v or {}) & set(RESERVED_TEMPLATE_VARIABLES))
        if reserved:
            raise ValueError(f"may not set {', '.join(reserved)} (the server sets them from "
                             "the request)")
        return v

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        if isinstance(self.tool_choice, NamedToolChoice) and \
                self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, "
                             "which is not in tools")
        if self.tool_choice in ("required",) and not names:
            raise ValueError("tool_choice 'required' needs tools")
        return self
