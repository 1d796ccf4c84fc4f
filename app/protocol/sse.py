"""Server-sent events framing (the subset OpenAI clients parse)."""

from __future__ import annotations

import json
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What json.dumps(ensure_ascii=False, separators=...) builds on every call, built once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def sse_data(payload: dict[str, Any]) -> bytes:
    """One `data:` event; JSON has no raw newlines, so one line suffices."""
    return b"data: " + _ENCODER.encode(payload).encode() + b"\n\n"


class SSEFrames:
    """The `data:` events of one stream whose payloads differ only in the one item of the
    list under `key` (a chunk's `choices`): the rest is serialised once, not per token.
    `item(x)` is byte for byte `sse_data({**envelope, key: [x]})`."""

    def __init__(self, envelope: dict[str, Any], key: str) -> None:
        assert key not in envelope  # the list must come last
        whole = _ENCODER.encode({**envelope, key: []})
        self._head = b"data: " + whole[: -len("]}")].encode()

    def item(self, item: dict[str, Any]) -> bytes:
        return self._head + _ENCODER.encode(item).encode() + b"]}\n\n"


def sse_comment(text: str = "keepalive") -> bytes:
    """A comment line: keeps proxies and clients from timing out, ignored by parsers."""
    clean = text.replace("\r", " ").replace("\n", " ")
    return f": {clean}\n\n".encode()
