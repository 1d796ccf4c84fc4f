"""The streamed form of a response: chat deltas in, Responses API events out.

`OutputEvents` takes the deltas a `ChoiceOutput` yields (content, reasoning_content,
tool_calls) and emits the documented event sequence for each output item, opening a new
item when the kind of text changes:
message: output_item.added, content_part.added, output_text.delta..., output_text.done,
content_part.done, output_item.done; reasoning: output_item.added,
reasoning_text.delta..., reasoning_text.done, output_item.done; function call:
output_item.added, function_call_arguments.delta..., function_call_arguments.done,
output_item.done. `items` is the finished output, the same items a whole reply has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.serving.response_items import (
    call_item,
    message_item,
    new_id,
    reasoning_item,
    text_part,
)


class EventWriter:
    """SSE framing with `event:` lines and a running sequence number."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {body}\n\n".encode()


@dataclass(slots=True)
class _Open:
    kind: str  # "message" | "reasoning" | "function_call"
    id: str
    index: int
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""


class OutputEvents:
    def __init__(self, write: EventWriter, logprobs: bool) -> None:
        self.write = write
        self.with_logprobs = logprobs
        self.items: list[dict[str, Any]] = []
        self._open: _Open | None = None

    def feed(self, delta: dict[str, Any], logprobs: list[dict[str, Any]] | None = None
             ) -> list[bytes]:
        out: list[bytes] = []
        if "content" in delta:
            out += self._ensure("message")
            cur = self._open
            assert cur is not None
            cur.text += delta["content"]
            lps = logprobs or []
            cur.logprobs += lps
            fields: dict[str, Any] = {"item_id": cur.id, "output_index": cur.index,
                                      "content_index": 0, "delta": delta["content"]}
            if self.with_logprobs:
                fields["logprobs"] = lps
            out.append(self.write("response.output_text.delta", **fields))
        elif "reasoning_content" in delta:
            out += self._ensure("reasoning")
            cur = self._open
            assert cur is not None
            cur.text += delta["reasoning_content"]
            out.append(self.write("response.reasoning_text.delta", item_id=cur.id,
                                  output_index=cur.index, content_index=0,
                                  delta=delta["reasoning_content"]))
        elif "tool_calls" in delta:
            call = delta["tool_calls"][0]
            if "id" in call:  # a new call: its name first, then its arguments
                out += self._close()
                cur = _Open("function_call", new_id("fc"), len(self.items),
                            call_id=call["id"], name=call["function"]["name"])
                self._open = cur
                out.append(self.write("response.output_item.added", output_index=cur.index,
                                      item=call_item(cur.id, cur.call_id, cur.name, "",
                                                     "in_progress")))
            else:
                cur = self._open
                assert cur is not None and cur.kind == "function_call"
                cur.text += call["function"]["arguments"]
                out.append(self.write("response.function_call_arguments.delta",
                                      item_id=cur.id, output_index=cur.index,
                                      delta=call["function"]["arguments"]))
        return out

    def finish(self) -> list[bytes]:
        """Close the open item; a reply with no output at all still has its message."""
        out = self._close()
        if not self.items:
            out += self._ensure("message") + self._close()
        return out

    def _ensure(self, kind: str) -> list[bytes]:
        if self._open is not None and self._open.kind == kind:
            return []
        out = self._close()
        cur = _Open(kind, new_id("msg" if kind == "message" else "rs"), len(self.items))
        self._open = cur
        if kind == "message":
            item = message_item(cur.id, "", None, "in_progress")
            item["content"] = []
            out.append(self.write("response.output_item.added", output_index=cur.index,
                                  item=item))
            out.append(self.write("response.content_part.added", item_id=cur.id,
                                  output_index=cur.index, content_index=0,
                                  part=text_part("", [] if self.with_logprobs else None)))
        else:
            item = reasoning_item(cur.id, "")
            item["content"] = []
            out.append(self.write("response.output_item.added", output_index=cur.index,
                                  item=item))
        return out

    def _close(self) -> list[bytes]:
        cur, self._open = self._open, None
        if cur is None:
            return []
        at = {"item_id": cur.id, "output_index": cur.index}
        if cur.kind == "message":
            lps = cur.logprobs if self.with_logprobs else None
            item = message_item(cur.id, cur.text, lps)
            done: dict[str, Any] = {**at, "content_index": 0, "text": cur.text}
            if lps is not None:
                done["logprobs"] = lps
            events = [self.write("response.output_text.done", **done),
                      self.write("response.content_part.done", **at, content_index=0,
                                 part=item["content"][0])]
        elif cur.kind == "reasoning":
            item = reasoning_item(cur.id, cur.text)
            events = [self.write("response.reasoning_text.done", **at, content_index=0,
                                 text=cur.text)]
        else:
            item = call_item(cur.id, cur.call_id, cur.name, cur.text)
            events = [self.write("response.function_call_arguments.done", **at,
                                 name=cur.name, arguments=cur.text)]
        self.items.append(item)
        events.append(self.write("response.output_item.done", output_index=cur.index,
                                 item=item))
        return events
