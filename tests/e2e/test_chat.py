"""End-to-end: a real uvicorn process with the real SmolLM2 weights, driven by the
`openai` SDK and raw httpx (for what the SDK hides: SSE comments, disconnects)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.harness import Server

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_capital_of_france(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                       max_tokens=30)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage and r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 0
    assert r.model == "smollm2-135m-instruct"


def test_stream_equals_non_stream_and_usage_chunk(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Write one sentence about the sea."}]
    full = client.chat.completions.create(messages=msgs, model="smollm2", temperature=0,
                                          max_tokens=40)
    chunks = list(client.chat.completions.create(
        messages=msgs, model="smollm2", temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks
              if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=3,
                                       temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage and r.usage.completion_tokens == 3
    r2 = client.chat.completions.create(model="smollm2", messages=FRANCE,
                                        max_completion_tokens=2, temperature=0)
    assert r2.usage and r2.usage.completion_tokens == 2


def test_stop_string_is_not_emitted(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                          max_tokens=30).choices[0].message.content or ""
    assert "Paris" in base
    r = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                       max_tokens=30, stop=["aris"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == base[: base.index("aris")]
    stream = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                            max_tokens=30, stop="aris", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        base[: base.index("aris")]


def test_seed_reproducible_and_n(client: openai.OpenAI) -> None:
    kw = dict(model="smollm2", messages=[{"role": "user", "content": "Tell me a story."}],
              temperature=1.0, max_tokens=20, seed=1234)
    a = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    b = client.chat.completions.create(**kw)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    two = client.chat.completions.create(n=2, **kw)  # type: ignore[call-overload]
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == a.choices[0].message.content


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                       max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 5
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)


def test_penalties_and_bias_are_applied(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                          max_tokens=8, logprobs=True)
    first = base.choices[0].logprobs.content[0].token  # type: ignore[union-attr]
    tok_id = _token_id(client, first)
    biased = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                            max_tokens=8, logit_bias={str(tok_id): -100})
    assert biased.choices[0].message.content != base.choices[0].message.content
    rep = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0,
                                         max_tokens=8, frequency_penalty=2.0,
                                         presence_penalty=2.0,
                                         extra_body={"repetition_penalty": 1.3})
    assert rep.choices[0].message.content


def _token_id(client: openai.OpenAI, token: str) -> int:
    """Find a token's id through logit_bias: the only API-level way without a tokenize route."""
    from app.models.gguf.loader import read_gguf
    from app.models.gguf.tokenizer import GGUFTokenizer
    from app.models.registry import Registry, resolve_source
    from app.settings import Settings

    reg = Registry.from_yaml(Settings().models)
    spec = reg.get("smollm2")
    assert spec is not None
    _, metadata = read_gguf(resolve_source(spec))
    ids = GGUFTokenizer.from_metadata(metadata).encode(token)
    assert len(ids) == 1
    return ids[0]


async def test_four_concurrent_streams(aclient: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        stream = await aclient.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=24, temperature=0.5, seed=i, stream=True)
        text, reason = "", None
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
                reason = c.choices[0].finish_reason or reason
        return text, reason

    results = await asyncio.gather(*(one(i) for i in range(4)))
    for text, reason in results:
        assert text and reason in ("stop", "length")


def test_disconnect_mid_stream_leaves_server_healthy(server: Server) -> None:
    body = {"model": "smollm2", "stream": True, "max_tokens": 2000, "temperature": 0.7,
            "messages": [{"role": "user", "content": "Write a very long essay about rivers."}]}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.api + "/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            seen = 0
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                if seen >= 5:
                    break  # leaving the block closes the connection mid-stream
        assert http.get(server.url + "/health").json()["status"] == "ok"
        t0 = time.monotonic()
        r = http.post(server.api + "/chat/completions", json={
            "model": "smollm2", "messages": FRANCE, "max_tokens": 10, "temperature": 0})
        assert r.status_code == 200
        # Prompt, not stuck behind the abandoned 2000-token generation.
        assert time.monotonic() - t0 < 20
    assert "aborted after" in server.log_text()


def test_keepalive_comments_during_long_prefill(server: Server) -> None:
    long = "The river flows to the sea and the sea returns as rain. " * 180
    body = {"model": "smollm2", "stream": True, "max_tokens": 2,
            "messages": [{"role": "user", "content": long}]}
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=120) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert any(ln.startswith(":") for ln in lines), "no SSE keepalive comment was sent"
    assert lines[-1] == "data: [DONE]"


def _error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_error_envelopes(server: Server) -> None:
    url = server.api + "/chat/completions"
    with httpx.Client(timeout=60) as http:
        err = _error(http.post(url, content=b"{not json", headers={
            "content-type": "application/json"}), 400)
        assert "JSON" in str(err["message"])
        err = _error(http.post(url, json={"model": "nope", "messages": FRANCE}), 404)
        assert err["code"] == "model_not_found"
        err = _error(http.post(url, json={"messages": FRANCE, "temperature": 5}), 400)
        assert err["param"] == "temperature"
        err = _error(http.post(url, json={"messages": FRANCE, "max_tokens": 10_000_000}), 400)
        assert err["code"] == "context_length_exceeded"
        err = _error(http.post(url, json={"messages": "hi"}), 400)
        assert err["param"] == "messages"
        _error(http.post(url, json={"messages": FRANCE, "n": 100}), 400)
        _error(http.get(server.url + "/no/such/route"), 404)
        _error(http.get(server.api + "/models/nope"), 404)
        ok = http.post(url, json={"messages": FRANCE, "max_tokens": 2, "some_new_field": 1})
        assert ok.status_code == 200


def test_models_and_health(server: Server, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "smollm2-135m-instruct" in ids
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    raw = httpx.get(server.api + "/models").json()
    assert json.dumps(raw)  # plain JSON
    # only what can be served here: the Hub-only Qwen entry is neither cached nor fetchable
    assert "qwen2.5-0.5b-instruct-4bit" not in ids


def test_unservable_and_wrong_kind_models_say_why(server: Server) -> None:
    url = server.api + "/chat/completions"
    with httpx.Client(timeout=60) as http:
        r = http.post(url, json={"model": "qwen2.5-0.5b-instruct-4bit", "messages": FRANCE})
        err = _error(r, 404)
        assert err["code"] == "model_not_found" and "cannot be loaded" in err["message"]
        err = _error(http.post(url, json={"model": "whisper-1", "messages": FRANCE}), 400)
        assert err["code"] == "model_not_supported" and "transcription" in err["message"]
    assert server.log_text().count("model qwen2.5-0.5b-instruct-4bit cannot be loaded") == 1
