"""A reply's text as it streams, split into content, reasoning and tool calls.

Models write reasoning between `<think>` and `</think>` and tool calls in their family's
syntax (tool_syntax.py); clients expect `reasoning_content`, `tool_calls` and a `content`
free of that markup. Text that could be the start of a marker is held back until it is
known not to be one, so no markup ever reaches `content`, however the text is split into
deltas. A call block that does not parse is given back as content (nothing is lost).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.text.tool_syntax import PYTHON_TAG, ToolSyntax, ToolSyntaxError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CALL_ID_HEX = 24


@dataclass(slots=True)
class Content:
    text: str


@dataclass(slots=True)
class Reasoning:
    text: str


@dataclass(slots=True)
class ToolCallPart:
    index: int
    id: str
    name: str
    arguments: str


Part = Content | Reasoning | ToolCallPart


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:CALL_ID_HEX]


@dataclass(slots=True)
class ReplyParser:
    tools: ToolSyntax | None = None
    """Parse tool calls in this syntax; None: a reply is content (and reasoning) only."""
    reasoning: bool = False
    """Split `<think>...</think>` into reasoning."""
    thinking: bool = False
    """Start inside reasoning (templates that open `<think>` in the prompt)."""
    _buffer: str = ""
    _in_call: bool = False
    _decided: bool = False
    """llama3: whether the reply's start showed it to be text or a call."""
    _space: str = ""
    """Whitespace not yet emitted: content only if text follows it."""
    _seen_text: bool = False
    _calls: int = 0

    @property
    def called(self) -> bool:
        return self._calls > 0

    def feed(self, text: str) -> list[Part]:
        self._buffer += text
        out: list[Part] = []
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> list[Part]:
        out: list[Part] = []
        while self._step(out, final=True):
            pass
        if self.called and self._call_open().startswith(self._buffer.strip()):
            self._buffer = ""  # the start of another call, cut off by max_tokens
        if self._buffer:
            self._emit_text(out, self._buffer)
            self._buffer = ""
        if self._space and self._seen_text and not self.called:
            out.append(Content(self._space))
        self._space = ""
        return out

    # -- one state transition; False when more text is needed -------------------------
    def _step(self, out: list[Part], final: bool) -> bool:
        if self.thinking:
            return self._until(THINK_CLOSE, out, final, Reasoning)
        if self._in_call:
            return self._call_block(out, final)
        markers = [m for m in (THINK_OPEN if self.reasoning else "", self._call_open()) if m]
        if self.tools is not None and self.tools.name == "llama3" and not self._decided:
            return self._llama3_start(final)
        cut, marker = _first(self._buffer, markers)
        if marker is None:
            keep = 0 if final else _partial_suffix(self._buffer, markers)
            self._emit_text(out, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        if marker == THINK_OPEN:
            self._emit_text(out, self._buffer[:cut])
            self.thinking = True
        else:  # text right before a call loses its trailing whitespace, however it streamed
            self._emit_text(out, self._buffer[:cut].rstrip())
            self._space = ""
            self._in_call = True
        self._buffer = self._buffer[cut + len(marker) :]
        return True

    def _call_open(self) -> str:
        return self.tools.open if self.tools is not None else ""

    def _until(self, close: str, out: list[Part], final: bool, kind: type[Reasoning]) -> bool:
        cut = self._buffer.find(close)
        if cut < 0:
            keep = 0 if final else _partial_suffix(self._buffer, [close])
            if len(self._buffer) > keep:
                out.append(kind(self._buffer[: len(self._buffer) - keep]))
            self._buffer = self._buffer[len(self._buffer) - keep :]
            if final:
                self.thinking = False
            return False
        if cut:
            out.append(kind(self._buffer[:cut]))
        self._buffer = self._buffer[cut + len(close) :]
        self.thinking = False
        return True

    def _call_block(self, out: list[Part], final: bool) -> bool:
        assert self.tools is not None
        close = self.tools.close
        cut = self._buffer.find(close) if close else -1
        if cut < 0 and not final:
            return False
        block = self._buffer if cut < 0 else self._buffer[:cut]
        self._buffer = "" if cut < 0 else self._buffer[cut + len(close or "") :]
        self._in_call = False
        try:
            calls = self.tools.parse(block)
        except ToolSyntaxError:
            self._emit_text(out, self.tools.open + block + (close if cut >= 0 and close else ""))
            return True
        for name, arguments in calls:
            out.append(ToolCallPart(self._calls, new_call_id(), name, arguments))
            self._calls += 1
        return True

    def _llama3_start(self, final: bool) -> bool:
        """A llama3 reply that opens with JSON (or the python tag) is a call block to its
        end; anything else is text."""
        head = self._buffer.lstrip()
        if not head or (PYTHON_TAG.startswith(head) and not final):
            return final and self._decide()  # too little to tell yet
        self._in_call = head.startswith("{") or head.startswith(PYTHON_TAG)
        return self._decide()

    def _decide(self) -> bool:
        self._decided = True
        return True

    def _emit_text(self, out: list[Part], text: str) -> None:
        text, self._space = self._space + text, ""
        if not text:
            return
        if not text.strip():
            self._space = text  # content only if more text follows
            return
        self._seen_text = True
        out.append(Content(text))


def _first(text: str, markers: list[str]) -> tuple[int, str | None]:
    best, found = len(text), None
    for m in markers:
        i = text.find(m)
        if 0 <= i < best:
            best, found = i, m
    return best, found


def _partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest end of `text` that a marker could start with."""
    longest = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), 0, -1):
            if text.endswith(m[:n]):
                longest = max(longest, n)
                break
    return longest
