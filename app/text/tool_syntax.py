"""How a model family writes tool calls, chosen from its chat template.

- hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block a call
  (Hermes, Qwen2.5/Qwen3, and the fallback for templates without tool support);
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or the newer
  `[TOOL_CALLS]name[ARGS]{...}` per call, to the end of the reply;
- llama3: the whole reply is `{"name": ..., "parameters": {...}}` (`;`-separated for
  several), optionally after `<|python_tag|>`.
`parse()` turns one block of raw text into (name, arguments JSON) pairs; `grammar()` gives
the Lark grammar (llguidance) that forces a reply into calls of the listed tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PYTHON_TAG = "<|python_tag|>"
MISTRAL_ARGS = "[ARGS]"
GUIDANCE_OPTIONS = "x-guidance"  # llguidance's JSON compile options inside a schema


class ToolSyntaxError(ValueError):
    """The text is not a well-formed call in this syntax."""


@dataclass(slots=True, frozen=True)
class ToolSyntax:
    name: str
    open: str
    """Text that starts a call block ('' for llama3: the reply itself, when it is JSON)."""
    close: str | None
    """Text that ends a block; None: the block runs to the end of the reply."""
    arguments_key: str = "arguments"

    def parse(self, block: str) -> list[tuple[str, str]]:
        """(name, arguments as a JSON object's text) for each call in `block`, the text
        between `open` and `close` (or the end)."""
        text = block.strip()
        if self.name == "mistral" and MISTRAL_ARGS in text and not text.startswith("["):
            return _mistral_args_form(text)
        if self.name == "llama3":
            text = text.removeprefix(PYTHON_TAG).strip()
            items = [_loads(part) for part in _split_top_level(text, ";")]
        else:
            value = _loads(text)
            items = value if isinstance(value, list) else [value]
        return [self._call(item) for item in items]

    def _call(self, item: Any) -> tuple[str, str]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ToolSyntaxError("a call needs a string 'name'")
        args = item.get(self.arguments_key, item.get("arguments", item.get("parameters", {})))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            args = _loads(args)
        if not isinstance(args, dict):
            raise ToolSyntaxError("call arguments must be a JSON object")
        return item["name"], json.dumps(args, ensure_ascii=False)

    def call_text(self, name: str, arguments: dict[str, Any]) -> str:
        """How this family writes one call (assistant turns sent back, fallback prompts)."""
        body = json.dumps({"name": name, self.arguments_key: arguments}, ensure_ascii=False)
        if self.name == "mistral":
            return f"{self.open}[{body}]"
        return f"{self.open}{body}{self.close or ''}"

    def grammar(self, call_schema: dict[str, Any], max_calls: int) -> str:
        """Lark grammar of a reply made of 1 to `max_calls` calls whose JSON matches
        `call_schema` (bounded: a weak model would repeat a call until max_tokens)."""
        call = f"%json {json.dumps(call_schema)}"
        if self.name == "mistral":
            inner = {k: v for k, v in call_schema.items() if k != GUIDANCE_OPTIONS}
            items = {"type": "array", "items": inner, "minItems": 1, "maxItems": max_calls}
            if GUIDANCE_OPTIONS in call_schema:  # llguidance reads them at the top only
                items[GUIDANCE_OPTIONS] = call_schema[GUIDANCE_OPTIONS]
            return f'start: "[TOOL_CALLS]" %json {json.dumps(items)}'
        one = call if self.name == "llama3" else f'"{self.open}" {call} "{self.close}"'
        sep = '"; "' if self.name == "llama3" else '"\\n"'
        more = ""
        for _ in range(max_calls - 1):  # one ( sep one ( sep one )? )?
            more = f" ({sep} {one}{more})?"
        return f"start: {one}{more}"


HERMES = ToolSyntax("hermes", "<tool_call>", "</tool_call>")
MISTRAL = ToolSyntax("mistral", "[TOOL_CALLS]", None)
LLAMA3 = ToolSyntax("llama3", "", None, arguments_key="parameters")


def detect(template: str | None) -> tuple[ToolSyntax, bool]:
    """(syntax, whether the template renders `tools` itself) for a chat template."""
    source = template or ""
    native = "tools" in source
    if "[TOOL_CALLS]" in source:
        return MISTRAL, native
    if PYTHON_TAG in source or "ipython" in source:
        return LLAMA3, native
    return HERMES, native and "<tool_call>" in source


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolSyntaxError(f"not JSON: {exc}") from exc


def _split_top_level(text: str, sep: str) -> list[str]:
    """`text` cut at `sep` outside strings and brackets."""
    parts, depth, start, in_string, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _mistral_args_form(text: str) -> list[tuple[str, str]]:
    """`name[ARGS]{...}` calls, back to back (Mistral's v11 tokenizer format)."""
    calls = []
    for chunk in text.split(MISTRAL.open):
        if not chunk.strip():
            continue
        name, _, args = chunk.partition(MISTRAL_ARGS)
        calls.append(MISTRAL._call({"name": name.strip(), "arguments": _loads(args)}))
    return calls
