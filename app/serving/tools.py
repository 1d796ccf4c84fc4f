"""Tools in a chat request: what the template sees, how replies are parsed, what is forced.

- The model family's call syntax comes from its chat template (app/text/tool_syntax.py).
- A template that renders `tools` gets them, and the conversation's assistant
  `tool_calls` and `tool` results in Hugging Face's message shape. A template without tool
  support (SmolLM2's) gets the documented fallback: the tool list and the Hermes call
  format in the system message, calls and results written as text in their turns.
- `tool_choice`: "none" leaves tools out entirely; "auto" lets the model choose;
  "required" or a named function forces the reply into calls of the allowed tools by
  constrained decoding, so their arguments always parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.protocol.chat import ChatCompletionRequest, ChatMessage, NamedToolChoice
from app.protocol.errors import APIError
from app.text.grammar import JSON_OPTIONS
from app.text.tool_syntax import HERMES, ToolSyntax, detect

FALLBACK_PROMPT = (
    "You can call functions. To call one, reply with a block\n"
    '<tool_call>{{"name": <function name>, "arguments": <arguments as a JSON object>}}'
    "</tool_call>\nfor each call, and nothing else. The results come back in "
    "<tool_response> blocks. The functions:\n{tools}"
)
TOOL_RESPONSE = "<tool_response>\n{content}\n</tool_response>"


@dataclass(slots=True)
class ToolPlan:
    messages: list[dict[str, Any]]
    """The conversation as the template takes it."""
    template_tools: list[dict[str, Any]] | None
    """`tools` for a template that renders them itself."""
    syntax: ToolSyntax | None
    """Parse calls out of replies in this syntax; None: tools are not in play."""
    forced_grammar: str | None
    """Lark grammar the reply must follow (tool_choice required or a named function)."""


def plan(body: ChatCompletionRequest, template: str | None) -> ToolPlan:
    tools = body.tools or []
    active = bool(tools) and body.tool_choice != "none"
    syntax, native = detect(template)
    if not native:
        syntax = HERMES  # the fallback writes calls in Hermes's format
    try:
        messages = [_message(m, syntax, native) for m in body.messages]
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    specs = [t.model_dump(exclude_none=True) for t in tools]
    if active and not native:
        messages = _with_fallback_prompt(messages, specs)
    return ToolPlan(messages, specs if active and native else None,
                    syntax if active else None,
                    _forced_grammar(body, syntax) if active else None)


def _message(m: ChatMessage, syntax: ToolSyntax, native: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name:
        out["name"] = m.name
    if m.role == "tool":
        if native:
            out["tool_call_id"] = m.tool_call_id
        else:
            out["content"] = TOOL_RESPONSE.format(content=out["content"])
    if m.tool_calls:
        calls = [(c.id, c.function.name, _arguments(c.function.arguments))
                 for c in m.tool_calls]
        if native:
            out["tool_calls"] = [{"id": i, "type": "function",
                                  "function": {"name": n, "arguments": a}} for i, n, a in calls]
        else:
            text = "\n".join(syntax.call_text(n, a) for _, n, a in calls)
            out["content"] = f"{out['content']}\n{text}" if out["content"] else text
    return out


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"tool call arguments are not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return value


def _with_fallback_prompt(messages: list[dict[str, Any]],
                          specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    prompt = FALLBACK_PROMPT.format(tools=json.dumps(specs, ensure_ascii=False))
    if messages and messages[0]["role"] in ("system", "developer"):
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _forced_grammar(body: ChatCompletionRequest, syntax: ToolSyntax) -> str | None:
    choice = body.tool_choice
    if choice != "required" and not isinstance(choice, NamedToolChoice):
        return None
    tools = body.tools or []
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    calls = [{"type": "object", "additionalProperties": False,
              "required": ["name", syntax.arguments_key],
              "properties": {"name": {"const": t.function.name},
                             syntax.arguments_key: t.function.parameters}} for t in tools]
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = {**schema, "x-guidance": JSON_OPTIONS}
    # a named function is called once; "required" may call each tool once in parallel
    max_calls = len(tools) if body.parallel_tool_calls and choice == "required" else 1
    return syntax.grammar(schema, max_calls)
