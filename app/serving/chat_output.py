"""What a chat choice's text becomes on the wire: content, reasoning_content, tool_calls.

One `ChoiceOutput` per choice. Without tools or reasoning in play the text is content, as
it streams; otherwise it goes through a ReplyParser (app/text/reply_parser.py), so markup
never reaches `content`, and a reply that called tools finishes with "tool_calls".
Also the JSON of usage and logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.request import TokenLogprob, Usage
from app.text.reply_parser import Content, Part, Reasoning, ReplyParser, ToolCallPart

# JSON has no -inf (a masked or fully penalized token): OpenAI reports -9999.0 there.
LOGPROB_FLOOR = -9999.0


@dataclass(slots=True)
class ChoiceOutput:
    parser: ReplyParser | None = None

    def deltas(self, text: str) -> list[dict[str, Any]]:
        """Stream deltas for new text (held back where it may be markup)."""
        if self.parser is None:
            return [{"content": text}] if text else []
        return [d for part in self.parser.feed(text) for d in _deltas(part)]

    def final_deltas(self) -> list[dict[str, Any]]:
        """What was held back, at the end of the reply."""
        if self.parser is None:
            return []
        return [d for part in self.parser.finish() for d in _deltas(part)]

    def finish_reason(self, reason: str) -> str:
        called = self.parser is not None and self.parser.called
        return "tool_calls" if called and reason == "stop" else reason

    def message(self, text: str) -> dict[str, Any]:
        """The whole reply as one assistant message."""
        if self.parser is None:
            return {"role": "assistant", "content": text}
        parts = self.parser.feed(text) + self.parser.finish()
        content = "".join(p.text for p in parts if isinstance(p, Content))
        reasoning = "".join(p.text for p in parts if isinstance(p, Reasoning))
        calls = [_call(p) for p in parts if isinstance(p, ToolCallPart)]
        message: dict[str, Any] = {"role": "assistant",
                                   "content": content if content or not calls else None}
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = calls
        return message


def _call(part: ToolCallPart) -> dict[str, Any]:
    return {"id": part.id, "type": "function",
            "function": {"name": part.name, "arguments": part.arguments}}


def _deltas(part: Part) -> list[dict[str, Any]]:
    if isinstance(part, Content):
        return [{"content": part.text}]
    if isinstance(part, Reasoning):
        return [{"reasoning_content": part.text}]
    # OpenAI's shape: id, type and name first, then the arguments in fragments
    return [{"tool_calls": [{"index": part.index, "id": part.id, "type": "function",
                             "function": {"name": part.name, "arguments": ""}}]},
            {"tool_calls": [{"index": part.index, "function": {"arguments": part.arguments}}]}]


def usage_json(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def floor_logprob(value: float) -> float:
    """A logprob JSON can carry: -inf (and NaN) become LOGPROB_FLOOR, and nothing is above
    0 (a NaN-poisoned row must not send +inf either)."""
    return min(value, 0.0) if value >= LOGPROB_FLOOR else LOGPROB_FLOOR


def _lp_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": floor_logprob(logprob),
            "bytes": list(token.encode("utf-8"))}


def logprobs_json(lps: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{**_lp_entry(lp.token, lp.logprob),
                         "top_logprobs": [_lp_entry(t, v) for t, v in lp.top]} for lp in lps]}
