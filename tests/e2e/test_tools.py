"""Tool calls end to end with the openai SDK and SmolLM2, whose template has no tool
support (the fallback prompt): a forced call round trip, streamed call deltas, `auto`
and `none`, and the 400s."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.harness import Server

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 40}}}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "required": ["tz"],
                                       "properties": {"tz": {"enum": ["CET", "UTC"]}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
FORCE = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_forced_call_round_trip(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER_TOOL],
                                       tool_choice=FORCE, temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args["city"], str) and calls[0].id.startswith("call_")
    follow_up = [*ASK, choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": calls[0].id,
                  "content": json.dumps({"city": args["city"], "sky": "sunny", "celsius": 21})}]
    final = client.chat.completions.create(model="smollm2", messages=follow_up,
                                           tools=[WEATHER_TOOL], tool_choice="none",
                                           temperature=0, max_tokens=40)
    text = final.choices[0].message.content or ""
    assert text.strip() and "<tool_call>" not in text
    assert final.choices[0].finish_reason in ("stop", "length")


def test_required_with_two_tools_streams_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=60, stream=True)
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == ""  # no raw markup leaks into content
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name in \
        ("get_weather", "get_time")
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert isinstance(json.loads(arguments), dict)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_and_none_answer_in_text_or_calls(client: openai.OpenAI) -> None:
    hello = [{"role": "user", "content": "Say hello."}]
    none = client.chat.completions.create(model="smollm2", messages=hello, tools=[WEATHER_TOOL],
                                          tool_choice="none", temperature=0, max_tokens=20)
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content
    auto = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER_TOOL],
                                          temperature=0, max_tokens=60)
    message = auto.choices[0].message
    assert "<tool_call>" not in (message.content or "")
    if message.tool_calls:  # the model chose to call
        assert auto.choices[0].finish_reason == "tool_calls"
        json.loads(message.tool_calls[0].function.arguments)


def test_tool_errors_are_400s(server: Server) -> None:
    url = server.api + "/chat/completions"
    bad = [
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function",
                                                 "function": {"name": "nope"}}},
        {"tool_choice": "required"},
        {"tools": [WEATHER_TOOL, WEATHER_TOOL]},
        {"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "not": {"type": "string"}}}}],
         "tool_choice": "required"},
    ]
    with httpx.Client(timeout=60) as http:
        for extra in bad:
            r = http.post(url, json={"messages": ASK, **extra})
            assert r.status_code == 400, (extra, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        bad_args = [*ASK, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": "{not json"}}]}]
        r = http.post(url, json={"messages": bad_args, "tools": [WEATHER_TOOL]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
