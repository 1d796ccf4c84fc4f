"""JsonCursor: the shortest closing text of every prefix of real documents parses."""

from __future__ import annotations

import json

import pytest

from app.text.json_closer import MAX_GROWTH_PER_BYTE, JsonCursor

DOCUMENTS = [
    {"name": "Ada", "tags": ["x", "y\\"], "n": -1.5e3, "ok": True, "none": None,
     "nested": {"deep": [[], {}, [1, {"k": "v\u00e9\\u0041"}]]}},
    {"": 0, "a": {"b": {"c": [True, False, None, "", 12]}}},
    {},
]


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_prefix_closes_into_valid_json(doc: object) -> None:
    text = json.dumps(doc)  # ", " and ": " separators, as the grammar writes them
    previous = 2  # closing() of the empty document is "{}"
    for i in range(len(text) + 1):
        cursor = JsonCursor()
        cursor.feed(text[:i])
        closing = cursor.closing()
        completed = text[:i] + closing
        json.loads(completed)
        assert len(closing) - previous <= MAX_GROWTH_PER_BYTE
        previous = len(closing)
    assert closing == ""


def test_closing_follows_itself() -> None:
    cursor = JsonCursor()
    cursor.feed('{"a": [1, {"b": "tex')
    closing = cursor.closing()
    for ch in closing:  # writing the closing text one byte at a time shortens it by one
        cursor.feed(ch)
        assert len(cursor.closing()) == len(closing) - 1
        closing = cursor.closing()
    assert closing == "" and cursor.state == "done"
