"""Request bodies whose every value can round-trip through JSON and UTF-8.

Python's `json` accepts more than JSON: a lone UTF-16 surrogate ("\\ud800") decodes into a
`str` that UTF-8 cannot encode, and `NaN`, `Infinity` or `1e400` into non-finite floats.
Either fails deep inside the server (the tokenizer, a reply that echoes the value) as a 500
that resets the connection. Walking the raw body once, before validation, turns every such
value into a 400 that names it, for every field of every request model at once.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

ERROR_TYPE = "invalid_value"
"""The pydantic error type; its context's "param" names the field (app/api/errors.py)."""


def text_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode, or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (it contains a lone surrogate code point)"
    return None


def _problem(value: Any) -> str | None:
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number (JSON has no NaN or Infinity)"
    return None


def find_invalid(value: Any, path: str = "") -> tuple[str, str] | None:
    """(path, problem) of the first value JSON or UTF-8 cannot carry, e.g.
    ("messages[0].content", "is not valid Unicode text ..."); path "" is the body."""
    if (problem := _problem(value)) is not None:
        return path, problem
    if isinstance(value, dict):
        for key, item in value.items():
            if (problem := text_problem(key)) is not None:  # name the object, not the key
                return path, "has a key that " + problem
            found = find_invalid(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = find_invalid(item, f"{path}[{i}]")
            if found:
                return found
    return None


class RequestBody(BaseModel):
    """Base of every JSON request body."""

    @model_validator(mode="before")
    @classmethod
    def _representable(cls, data: Any) -> Any:
        found = find_invalid(data)
        if found:
            path, problem = found
            subject = f"'{path}'" if path else "The request body"
            raise PydanticCustomError(ERROR_TYPE, "{subject} {problem}",
                                      {"subject": subject, "problem": problem,
                                       "param": path or None})
        return data
