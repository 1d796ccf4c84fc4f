"""Replies split into content, reasoning and tool calls, on recorded model outputs, fed
whole, in 3-character pieces and one character at a time (app/text/reply_parser.py)."""

from __future__ import annotations

import json

import pytest

from app.text.reply_parser import Content, Reasoning, ReplyParser, ToolCallPart
from app.text.tool_syntax import HERMES, LLAMA3, MISTRAL, ToolSyntax, detect

CHUNKS = (10_000, 3, 1)
WEATHER = {"city": "Paris", "unit": "celsius"}


def split(text: str, chunk: int, **kw: object) -> tuple[str, str, list[tuple[str, dict]]]:
    parser = ReplyParser(**kw)  # type: ignore[arg-type]
    parts = []
    for i in range(0, len(text), chunk):
        parts += parser.feed(text[i : i + chunk])
    parts += parser.finish()
    content = "".join(p.text for p in parts if isinstance(p, Content))
    reasoning = "".join(p.text for p in parts if isinstance(p, Reasoning))
    calls = [p for p in parts if isinstance(p, ToolCallPart)]
    assert [c.index for c in calls] == list(range(len(calls)))
    assert len({c.id for c in calls}) == len(calls)
    return content, reasoning, [(c.name, json.loads(c.arguments)) for c in calls]


RECORDED: list[tuple[ToolSyntax, str, str, list[tuple[str, dict]]]] = [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
             '"unit": "celsius"}}\n</tool_call>', "", [("get_weather", WEATHER)]),
    (HERMES, 'Let me check both.\n<tool_call>{"name": "get_weather", "arguments": '
             '{"city": "Paris", "unit": "celsius"}}</tool_call>\n<tool_call>{"name": "get_time", '
             '"arguments": {"tz": "CET"}}</tool_call>', "Let me check both.",
     [("get_weather", WEATHER), ("get_time", {"tz": "CET"})]),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
              '"celsius"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]', "",
     [("get_weather", WEATHER), ("get_time", {"tz": "CET"})]),
    (MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}', "",
     [("get_weather", WEATHER)]),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "",
     [("get_weather", WEATHER)]),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": '
             '"celsius"}}; {"name": "get_time", "parameters": {"tz": "CET"}}', "",
     [("get_weather", WEATHER), ("get_time", {"tz": "CET"})]),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("case", range(len(RECORDED)))
def test_recorded_tool_calls(case: int, chunk: int) -> None:
    syntax, text, content, calls = RECORDED[case]
    assert split(text, chunk, tools=syntax) == (content, "", calls)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_text_that_only_looks_like_markup_stays_content(chunk: int) -> None:
    text = "Use <tool> tags or a <tool_cal typo; [TOOL] too. {not a call}"
    for syntax in (HERMES, MISTRAL):
        assert split(text, chunk, tools=syntax) == (text, "", [])
    assert split("The answer is {42}.", chunk, tools=LLAMA3) == ("The answer is {42}.", "", [])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_broken_call_comes_back_as_content(chunk: int) -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call> sorry'
    assert split(text, chunk, tools=HERMES) == (text, "", [])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_reasoning_split(chunk: int) -> None:
    text = "<think>\nThe user wants Paris.\n</think>\n\nParis is the capital."
    assert split(text, chunk, reasoning=True) == (
        "\n\nParis is the capital.", "\nThe user wants Paris.\n", [])
    # a template that opens <think> in the prompt: the reply starts inside it
    assert split("hmm</think>Paris.", chunk, reasoning=True, thinking=True) == \
        ("Paris.", "hmm", [])
    assert split("<think>cut off", chunk, reasoning=True) == ("", "cut off", [])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_reasoning_then_a_call(chunk: int) -> None:
    text = '<think>I need the weather.</think>\n<tool_call>{"name": "get_weather", ' \
           '"arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'
    assert split(text, chunk, tools=HERMES, reasoning=True) == \
        ("", "I need the weather.", [("get_weather", WEATHER)])


def test_detected_from_templates() -> None:
    assert detect("{% for tool in tools %}<tool_call>{% endfor %}") == (HERMES, True)
    assert detect("{{ '[TOOL_CALLS]' }}{% if tools %}{% endif %}") == (MISTRAL, True)
    assert detect("<|python_tag|>{{ tools }}") == (LLAMA3, True)
    assert detect("<|im_start|>{{ message['role'] }}") == (HERMES, False)  # SmolLM2
    assert detect(None) == (HERMES, False)
