"""Server-sent events framing (the subset OpenAI clients parse)."""

from __future__ import annotations

import json
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_data(payload: dict[str, Any]) -> bytes:
    """One `data:` event; JSON has no raw newlines, so one line suffices."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return b"data: " + body + b"\n\n"


def sse_comment(text: str = "keepalive") -> bytes:
    """A comment line: keeps proxies and clients from timing out, ignored by parsers."""
    clean = text.replace("\r", " ").replace("\n", " ")
    return f": {clean}\n\n".encode()
