"""/v1/responses end to end with the openai SDK: conversations through
previous_response_id on resident KV sessions, the streamed event sequence, stored
responses across a restart, tools and structured output, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.harness import Server, run_server

MESSAGE_EVENTS = ["response.output_item.added", "response.content_part.added",
                  "response.output_text.delta", "response.output_text.done",
                  "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_three_turns_reuse_the_conversation_cache(client: openai.OpenAI) -> None:
    first = client.responses.create(model="smollm2", instructions="Answer in one sentence.",
                                    input="Name a large river in Europe.", temperature=0,
                                    max_output_tokens=24)
    assert first.status in ("completed", "incomplete") and first.output_text
    prev = first
    for question in ("Which countries does it flow through?", "How long is it?"):
        turn = client.responses.create(model="smollm2", instructions="Answer in one sentence.",
                                       input=question, previous_response_id=prev.id,
                                       temperature=0, max_output_tokens=24)
        assert turn.usage and prev.usage
        # The previous turn's whole prompt was resident: only the new input is prefilled.
        assert turn.usage.input_tokens_details.cached_tokens >= prev.usage.input_tokens
        assert turn.usage.input_tokens > prev.usage.input_tokens + prev.usage.output_tokens - 2
        assert turn.previous_response_id == prev.id
        prev = turn
    stored = client.responses.retrieve(first.id)
    assert stored.output_text == first.output_text
    items = client.responses.input_items.list(first.id).data
    assert items[0].type == "message" and items[0].content[0].text == \
        "Name a large river in Europe."  # type: ignore[union-attr]


def test_streamed_events_follow_the_documented_order(client: openai.OpenAI) -> None:
    kw = {"model": "smollm2", "input": "Say hello in French.", "temperature": 0,
          "max_output_tokens": 40}
    whole = client.responses.create(**kw)  # type: ignore[call-overload]
    with client.responses.stream(**kw) as stream:  # type: ignore[arg-type]
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    final_kind = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert kinds[-1] == final_kind
    collapsed = [k for i, k in enumerate(kinds[2:-1]) if i == 0 or kinds[2:-1][i - 1] != k]
    assert collapsed == MESSAGE_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text == final.output_text == whole.output_text
    assert final.usage and final.usage.output_tokens == whole.usage.output_tokens  # type: ignore[union-attr]


def test_store_false_is_not_continued(client: openai.OpenAI, server: Server) -> None:
    r = client.responses.create(model="smollm2", input="Hi", store=False, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="smollm2", input="Again", previous_response_id=r.id)
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert httpx.get(f"{server.api}/responses/{r.id}").status_code == 404
    assert httpx.delete(f"{server.api}/responses/resp_{'0' * 32}").status_code == 404


class City(BaseModel):
    name: str
    country: str


def test_structured_output_and_tools(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(model="smollm2", input="Name the capital of France.",
                                    text_format=City, temperature=0, max_output_tokens=60)
    assert isinstance(parsed.output_parsed, City)
    tools = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]
    called = client.responses.create(model="smollm2", input="What is the weather in Paris?",
                                     tools=tools, tool_choice="required", temperature=0,  # type: ignore[arg-type]
                                     max_output_tokens=60)
    calls = [o for o in called.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    answer = client.responses.create(
        model="smollm2", previous_response_id=called.id, tools=tools,  # type: ignore[arg-type]
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": '{"temperature_c": 21, "sky": "clear"}'}],
        temperature=0, max_output_tokens=40)
    assert answer.output_text and answer.usage
    assert answer.usage.input_tokens_details.cached_tokens > 0


@pytest.mark.parametrize("body, param", [
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "truncation": "auto"}, "truncation"),
    ({"input": "hi", "include": ["file_search_call.results"]}, "include"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": []}, "input"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation"),
    ({"input": "hi", "model": "whisper-1"}, "model"),
])
def test_what_cannot_be_honoured_is_a_400(server: Server, body: dict[str, object],
                                          param: str) -> None:
    r = httpx.post(server.api + "/responses", json={"model": "smollm2", **body}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert param in (err["param"] or "") or param in err["message"], err


def test_stored_responses_survive_a_restart(tmp_path: Path) -> None:
    env = {"MLXD_KV_DIR": str(tmp_path / "kv")}
    with run_server(tmp_path, env=env) as srv:
        c = openai.OpenAI(base_url=srv.api, api_key="x", max_retries=0, timeout=120)
        first = c.responses.create(model="smollm2", input="List three colours.",
                                   temperature=0, max_output_tokens=16)
    with run_server(tmp_path, env=env) as srv:
        c = openai.OpenAI(base_url=srv.api, api_key="x", max_retries=0, timeout=120)
        assert c.responses.retrieve(first.id).output_text == first.output_text
        turn = c.responses.create(model="smollm2", input="And three animals?",
                                  previous_response_id=first.id, temperature=0,
                                  max_output_tokens=8)
        assert turn.usage and first.usage
        assert turn.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
