"""Structured output end to end: the openai SDK's `parse()` with a pydantic model against
the real server and SmolLM2, json_object streamed, and the 400s of what cannot be enforced."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.harness import Server

ASK = [{"role": "user", "content": "Give me the capital of France and its population as JSON."}]


class City(BaseModel):
    name: str
    country: str
    population: int
    coastal: bool


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model="smollm2", messages=ASK, response_format=City,
                                      temperature=0, max_tokens=120)
    city = r.choices[0].message.parsed
    assert isinstance(city, City)
    assert r.choices[0].finish_reason == "stop"


def test_json_object_streams_one_object(client: openai.OpenAI) -> None:
    for seed in range(3):
        stream = client.chat.completions.create(
            model="smollm2", messages=ASK, response_format={"type": "json_object"},
            temperature=1.0, seed=seed, max_tokens=48, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert isinstance(json.loads(text), dict)  # closed within the 48 tokens


def test_logprobs_of_masked_tokens_stay_json(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=8,
                                       response_format={"type": "json_object"}, temperature=0,
                                       logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(t.logprob >= -9999.0 for e in content for t in e.top_logprobs)


def test_what_cannot_be_enforced_is_a_400(server: Server) -> None:
    url = server.api + "/chat/completions"
    bad = [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}}},
         "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}},
         "response_format"),
        ({"type": "xml"}, "response_format"),
    ]
    with httpx.Client(timeout=60) as http:
        for fmt, param in bad:
            r = http.post(url, json={"messages": ASK, "response_format": fmt})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"].startswith(param)
        ok = http.post(url, json={"messages": ASK, "max_tokens": 4})
        assert ok.status_code == 200
