"""/v1/completions end to end with the openai SDK (legacy prompt completion)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.harness import Server

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_completion_streamed_equals_whole(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12,
                                      temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.usage and whole.usage.completion_tokens == 12
    assert whole.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 12


def test_echo_stop_n_and_several_prompts(client: openai.OpenAI) -> None:
    echoed = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=5,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPT)
    base = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12,
                                     temperature=0).choices[0].text
    cut = base.strip().split()[0]
    stopped = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=12,
                                        temperature=0, stop=[cut])
    assert cut not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    many = client.completions.create(model="smollm2", prompt=[PROMPT, "One, two,"], n=2,
                                     max_tokens=4, temperature=0.9, seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    ids = httpx.post(str(client.base_url) + "completions", timeout=60, json={
        "prompt": [504, 3575, 282, 4649, 314], "max_tokens": 3, "temperature": 0}).json()
    assert ids["choices"][0]["text"]


def test_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=4,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert lp and len(lp.tokens or []) == 4 == len(lp.token_logprobs or [])
    assert all(len(top) == 2 for top in lp.top_logprobs or [])
    assert (lp.text_offset or [])[0] == 0 and "".join(lp.tokens or []) == r.choices[0].text


def test_unsupported_fields_are_400s(server: Server) -> None:
    url = server.api + "/completions"
    with httpx.Client(timeout=60) as http:
        for extra in ({"suffix": "end."}, {"echo": True, "logprobs": 1}, {"best_of": 3},
                      {"prompt": ""}, {"prompt": [10**9]}, {"logprobs": 9}):
            r = http.post(url, json={"prompt": PROMPT, **extra})
            assert r.status_code == 400, (extra, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
