"""Responses API items <-> chat messages (plain data, no engine).

Input items become the chat messages a template renders; a reply (the assistant message
`ChoiceOutput.message` builds) becomes output items: reasoning, then the message, then
function calls. Item kinds this server cannot take are 400s naming the item.
"""

from __future__ import annotations

import uuid
from typing import Any

from app.protocol.errors import APIError

Message = dict[str, Any]
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_messages(items: str | list[dict[str, Any]]) -> list[Message]:
    """Chat messages for a request's `input` (text, or message/function-call items)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[Message] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = ROLES.get(str(item.get("role")))
            if role is None:
                raise APIError(400, f"{where}.role must be one of {sorted(ROLES)}",
                               param=f"{where}.role")
            out.append({"role": role, "content": _text(item.get("content"), where)})
        elif kind == "function_call":
            call = {"id": _str(item, "call_id", where), "type": "function",
                    "function": {"name": _str(item, "name", where),
                                 "arguments": _str(item, "arguments", where)}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant" and \
                    last.get("content") is not None:
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, where)
            out.append({"role": "tool", "tool_call_id": _str(item, "call_id", where),
                        "content": text})
        elif kind == "reasoning":
            continue  # earlier reasoning is not shown to the model again (as templates do)
        else:
            raise APIError(400, f"{where}: input items of type {kind!r} are not supported "
                           "(message, function_call, function_call_output, reasoning)",
                           param=where)
    return out


def _str(item: dict[str, Any], key: str, where: str) -> str:
    val = item.get(key)
    if not isinstance(val, str):
        raise APIError(400, f"{where}.{key} must be a string", param=f"{where}.{key}")
    return val


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of content parts",
                       param=f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise APIError(400, f"{where}.content[{j}]: content of type {kind!r} is not "
                           "supported by this server (text only)",
                           param=f"{where}.content[{j}]")
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise APIError(400, f"{where}.content[{j}].text must be a string",
                           param=f"{where}.content[{j}]")
        parts.append(text)
    return "".join(parts)


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools ({type, name, parameters, ...}) in chat's nesting."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise APIError(400, f"tools[{i}]: tools of type {tool.get('type')!r} are not "
                           "supported by this server (function tools only)",
                           param=f"tools[{i}]")
        fn = {k: v for k, v in tool.items() if k != "type"}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise APIError(400, "tool_choice must be none, auto, required or "
                   "{type: function, name}", param="tool_choice")


def output_items(message: Message, logprobs: list[dict[str, Any]] | None,
                 status: str = "completed") -> list[dict[str, Any]]:
    """The output items of one assistant reply."""
    items: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        items.append(reasoning_item(new_id("rs"), message["reasoning_content"]))
    if message.get("content") or not message.get("tool_calls"):
        items.append(message_item(new_id("msg"), message.get("content") or "", logprobs,
                                  status))
    for call in message.get("tool_calls") or []:
        items.append(call_item(new_id("fc"), call["id"], call["function"]["name"],
                               call["function"]["arguments"]))
    return items


def message_item(item_id: str, text: str, logprobs: list[dict[str, Any]] | None,
                 status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [text_part(text, logprobs)]}


def text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if logprobs is not None:
        part["logprobs"] = logprobs
    return part


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str,
              status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def history_message(message: Message) -> Message:
    """The assistant message kept for the next turn (reasoning is not shown again)."""
    return {k: v for k, v in message.items() if k != "reasoning_content"}
