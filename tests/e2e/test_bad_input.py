"""End-to-end: bad input is a 4xx in OpenAI's envelope, never a 5xx, and never costs the
client its connection. Every case goes over one keep-alive httpx connection, followed by
a small request that must succeed on that same connection (same local port)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.harness import Server

SURROGATE = "\ud800"
HI = [{"role": "user", "content": "hi"}]
OK_CHAT = {"model": "smollm2", "messages": HI, "max_tokens": 1, "temperature": 0}
# What a message must never show: tracebacks, paths, Python or nanobind internals
LEAKS = re.compile(r"Traceback|File \"|site-packages|/work/|\.py\b|nanobind|incompatible "
                   r"function|<class |object at 0x|\bapp\.[a-z_]+\.|Error:|Exception")
BIG_AUDIO = 2 * 1024 * 1024 + 4096  # just over the fixture's MLXD_MAX_AUDIO_BYTES


@dataclass(frozen=True, slots=True)
class Bad:
    method: str
    path: str
    status: int
    param: str | None = "?"
    """The expected `param`; "?" accepts any."""
    request: dict[str, Any] = field(default_factory=dict)
    """httpx request arguments."""


def _json(body: Any) -> dict[str, Any]:
    # json.dumps, not httpx's json=: it escapes lone surrogates and writes NaN/Infinity,
    # which is what such clients put on the wire
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def chat(status: int, param: str | None = "?", **fields: Any) -> Bad:
    return Bad("POST", "/v1/chat/completions", status, param, _json({**OK_CHAT, **fields}))


def comp(status: int, param: str | None = "?", **fields: Any) -> Bad:
    body = {"model": "smollm2", "prompt": "hi", "max_tokens": 1, **fields}
    return Bad("POST", "/v1/completions", status, param, _json(body))


def resp(status: int, param: str | None = "?", **fields: Any) -> Bad:
    body = {"model": "smollm2", "input": "hi", "max_output_tokens": 1, **fields}
    return Bad("POST", "/v1/responses", status, param, _json(body))


def emb(status: int, param: str | None = "?", **fields: Any) -> Bad:
    return Bad("POST", "/v1/embeddings", status, param, _json({"input": "hi", **fields}))


def raw(path: str, body: bytes | str, content_type: str = "application/json",
        status: int = 400) -> Bad:
    return Bad("POST", path, status, "?", {"content": body, "headers":
                                          {"content-type": content_type}})


def audio(status: int, param: str | None = "?", data: bytes = b"not audio at all",
          path: str = "/v1/audio/transcriptions", **form: Any) -> Bad:
    return Bad("POST", path, status, param, {"files": {"file": ("a.wav", data)}, "data": form})


def multipart(fields: dict[str, bytes], charset: str) -> dict[str, Any]:
    """A form whose text fields are already encoded in `charset`, which the content type
    declares."""
    boundary = "mlxdboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
             .encode() + v + b"\r\n" for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="a.wav"\r\n\r\nRIFF\r\n--{boundary}--\r\n'.encode())
    return {"content": b"".join(parts), "headers": {
        "content-type": f"multipart/form-data; boundary={boundary}; charset={charset}"}}


def _tool(name: str = "f", parameters: Any = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters":
                                             parameters or {"type": "object"}}}


CASES: dict[str, Bad] = {
    # routes, methods, content types, bodies that are not a JSON object
    "unknown-route": Bad("GET", "/v1/nope", 404, None),
    "unknown-post-route": Bad("POST", "/v2/chat/completions", 404, None, _json({})),
    "get-chat": Bad("GET", "/v1/chat/completions", 405, None),
    "put-completions": Bad("PUT", "/v1/completions", 405, None),
    "delete-embeddings": Bad("DELETE", "/v1/embeddings", 405, None),
    "post-models": Bad("POST", "/v1/models/smollm2", 405, None),
    "post-cache-sessions": Bad("POST", "/v1/cache/sessions", 405, None),
    "text-plain": raw("/v1/chat/completions", json.dumps(OK_CHAT), "text/plain"),
    "form-urlencoded": raw("/v1/chat/completions", "model=smollm2",
                           "application/x-www-form-urlencoded"),
    "not-json": raw("/v1/chat/completions", "this is not json"),
    "truncated-json": raw("/v1/completions", '{"prompt": ["hi", '),
    "empty-body": raw("/v1/chat/completions", ""),
    "json-array": raw("/v1/chat/completions", "[1, 2]"),
    "json-null": raw("/v1/embeddings", "null"),
    "invalid-utf8": raw("/v1/chat/completions", b'{"messages": "\xff\xfe"}'),
    "deep-nesting": raw("/v1/chat/completions", "[" * 100_000),
    "huge-integer": raw("/v1/chat/completions", '{"max_tokens": 1' + "0" * 5000 + "}"),
    # chat: messages, models, sampling ranges
    "chat-no-messages": chat(400, "messages", messages=None),
    "chat-empty-messages": chat(400, "messages", messages=[]),
    "chat-bad-role": chat(400, messages=[{"role": "wizard", "content": "hi"}]),
    "chat-content-number": chat(400, messages=[{"role": "user", "content": 5}]),
    "chat-image-part": chat(400, "messages", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
    "chat-unknown-model": chat(404, "model", model="no-such-model"),
    "chat-embedding-model": chat(400, "model", model="all-minilm-l6-v2"),
    "chat-temperature-high": chat(400, "temperature", temperature=2.5),
    "chat-temperature-negative": chat(400, "temperature", temperature=-1),
    "chat-temperature-nan": chat(400, "temperature", temperature=math.nan),
    "chat-top-p-zero": chat(400, "top_p", top_p=0),
    "chat-n-zero": chat(400, "n", n=0),
    "chat-n-huge": chat(400, "n", n=10_000),
    "chat-max-tokens-zero": chat(400, "max_tokens", max_tokens=0),
    "chat-max-tokens-negative": chat(400, "max_tokens", max_tokens=-5),
    "chat-max-tokens-huge": chat(400, "messages", max_tokens=2**70),
    "chat-max-tokens-string": chat(400, "max_tokens", max_tokens="ten"),
    "chat-presence-penalty": chat(400, "presence_penalty", presence_penalty=5),
    "chat-frequency-penalty": chat(400, "frequency_penalty", frequency_penalty=-3),
    "chat-top-logprobs-21": chat(400, "top_logprobs", logprobs=True, top_logprobs=21),
    "chat-top-logprobs-alone": chat(400, top_logprobs=2),
    "chat-repetition-penalty-huge": chat(400, "repetition_penalty", logprobs=True,
                                         repetition_penalty=1e30),
    "chat-repetition-penalty-zero": chat(400, "repetition_penalty", repetition_penalty=0),
    "chat-seed-huge": chat(400, "seed", seed=2**70),
    "chat-seed-very-negative": chat(400, "seed", seed=-(2**70)),
    "chat-seed-float": chat(400, "seed", seed=1.5),
    "chat-logit-bias-word": chat(400, "logit_bias", logit_bias={"hello": 1}),
    "chat-logit-bias-superscript": chat(400, "logit_bias", logit_bias={"\u00b2": 1}),
    "chat-logit-bias-range": chat(400, "logit_bias", logit_bias={"5": 1000}),
    "chat-logit-bias-vocab": chat(400, "logit_bias", logit_bias={"99999999": 1}),
    "chat-too-many-stops": chat(400, "stop", stop=[str(i) for i in range(17)]),
    "chat-stop-number": chat(400, stop=5),
    "chat-stream-options": chat(400, "stream_options.include_usage", stream=True,
                                stream_options={"include_usage": "perhaps"}),
    "chat-reasoning-effort": chat(400, "reasoning_effort", reasoning_effort="maximal"),
    "chat-template-kwargs-reserved": chat(400, "chat_template_kwargs",
                                          chat_template_kwargs={"add_generation_prompt": 1}),
    "chat-context-exceeded": chat(400, "messages", messages=[
        {"role": "user", "content": "word " * 10_000}]),
    # chat: tools and structured output
    "chat-tool-no-function": chat(400, tools=[{"type": "function"}]),
    "chat-tool-bad-name": chat(400, tools=[_tool("has spaces")]),
    "chat-tool-bad-type": chat(400, tools=[{"type": "retrieval"}]),
    "chat-tools-duplicate": chat(400, tools=[_tool(), _tool()]),
    "chat-tool-choice-unknown": chat(400, tools=[_tool()], tool_choice={
        "type": "function", "function": {"name": "g"}}),
    "chat-tool-choice-required-no-tools": chat(400, tool_choice="required"),
    "chat-tool-choice-word": chat(400, tool_choice="sometimes"),
    "chat-tool-schema": chat(400, "tools", tools=[_tool(parameters={"type": "bogus"})],
                             tool_choice="required"),
    "chat-tool-call-arguments": chat(400, "messages", messages=[*HI, {
        "role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": "not json"}}]}]),
    "chat-response-format-type": chat(400, response_format={"type": "xml"}),
    "chat-response-format-missing": chat(400, response_format={"type": "json_schema"}),
    "chat-schema-type": chat(400, "response_format", response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}),
    "chat-schema-ref": chat(400, "response_format", response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}),
    "chat-schema-infinity": chat(400, "response_format.json_schema.schema.maximum",
                                 response_format={"type": "json_schema", "json_schema": {
                                     "name": "x", "schema": {"maximum": math.inf}}}),
    # lone surrogates wherever text goes
    "surrogate-content": chat(400, "messages[0].content",
                              messages=[{"role": "user", "content": "a" + SURROGATE}]),
    "surrogate-content-part": chat(400, "messages[0].content[0].text", messages=[
        {"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]),
    "surrogate-name": chat(400, "messages[0].name",
                           messages=[{"role": "user", "content": "hi", "name": SURROGATE}]),
    "surrogate-tool-args": chat(400, "messages[1].tool_calls[0].function.arguments", messages=[
        *HI, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": '{"a": "' + SURROGATE + '"}'}}]}]),
    "surrogate-stop": chat(400, "stop[0]", stop=["\udfff"]),
    "surrogate-template-key": chat(400, "chat_template_kwargs",
                                   chat_template_kwargs={SURROGATE: True}),
    "surrogate-prompt": comp(400, "prompt", prompt=SURROGATE),
    "surrogate-instructions": resp(400, "instructions", instructions=SURROGATE),
    "surrogate-input-item": resp(400, "input[0].content", input=[
        {"role": "user", "content": SURROGATE}]),
    "surrogate-embedding": emb(400, "input[1]", input=["fine", SURROGATE]),
    # b"+2AA-" is UTF-7 for a lone surrogate, which the form decoder lets through
    "surrogate-transcription-prompt": Bad("POST", "/v1/audio/transcriptions", 400, "prompt",
                                          multipart({"prompt": b"+2AA-"}, "utf-7")),
    # completions
    "completions-no-prompt": comp(400, "prompt", prompt=None),
    "completions-empty-prompt": comp(400, "prompt", prompt=[]),
    "completions-empty-string": comp(400, "prompt", prompt=[""]),
    "completions-token-vocab": comp(400, "prompt", prompt=[10**9]),
    "completions-token-negative": comp(400, "prompt", prompt=[-1]),
    "completions-mixed-prompt": comp(400, "prompt", prompt=[[1], "a"]),
    "completions-suffix": comp(400, "suffix", suffix="end"),
    "completions-echo-logprobs": comp(400, echo=True, logprobs=1),
    "completions-logprobs-6": comp(400, "logprobs", logprobs=6),
    "completions-best-of": comp(400, "best_of", best_of=3),
    "completions-too-many": comp(400, prompt=["hi"] * 65),
    # responses and stored responses
    "responses-no-input": resp(400, "input", input=None),
    "responses-empty-input": resp(400, input=[]),
    "responses-empty-item": resp(400, input=[{}]),
    "responses-item-type": resp(400, "input[0]", input=[{"type": "item_reference", "id": "x"}]),
    "responses-content-number": resp(400, "input[0].content", input=[
        {"role": "user", "content": 5}]),
    "responses-web-search": resp(400, "tools[0]", tools=[{"type": "web_search"}]),
    "responses-tool-choice": resp(400, "tool_choice", tool_choice={"type": "function"}),
    "responses-previous-unknown": resp(404, "previous_response_id",
                                       previous_response_id="resp_nope"),
    "responses-include": resp(400, "include", include=["bogus"]),
    "responses-metadata-many": resp(400, metadata={str(i): "v" for i in range(17)}),
    "responses-metadata-number": resp(400, "metadata.a", metadata={"a": 5}),
    "responses-conversation": resp(400, conversation="conv_1"),
    "responses-max-output-zero": resp(400, "max_output_tokens", max_output_tokens=0),
    "responses-schema": resp(400, text={"format": {"type": "json_schema", "name": "x",
                                                   "schema": {"type": "nope"}}}),
    "responses-get-unknown": Bad("GET", "/v1/responses/resp_nope", 404, "response_id"),
    "responses-get-traversal": Bad("GET", "/v1/responses/..%2F..%2Fetc%2Fpasswd", 404),
    "responses-delete-unknown": Bad("DELETE", "/v1/responses/resp_nope", 404, "response_id"),
    "responses-items-unknown": Bad("GET", "/v1/responses/resp_nope/input_items", 404),
    # embeddings
    "embeddings-no-input": emb(400, "input", input=None),
    "embeddings-empty-list": emb(400, input=[]),
    "embeddings-empty-string": emb(400, "input", input=""),
    "embeddings-empty-tokens": emb(400, "input", input=[[]]),
    "embeddings-token-vocab": emb(400, "input", input=[[1], [2**40]]),
    "embeddings-format": emb(400, "encoding_format", encoding_format="hex"),
    "embeddings-dimensions-zero": emb(400, "dimensions", dimensions=0),
    "embeddings-dimensions-huge": emb(400, "dimensions", dimensions=10**9),
    "embeddings-chat-model": emb(400, "model", model="smollm2"),
    "embeddings-unknown-model": emb(404, "model", model="no-such-model"),
    "embeddings-too-many": emb(400, input=["x"] * 2049),
    # audio
    "audio-json-body": raw("/v1/audio/transcriptions", json.dumps({"file": "x"})),
    "audio-no-boundary": raw("/v1/audio/transcriptions", "x", "multipart/form-data"),
    "audio-bad-multipart": raw("/v1/audio/transcriptions", "x",
                               "multipart/form-data; boundary=zz"),
    "audio-garbage": audio(400, "file"),
    "audio-empty": audio(400, "file", data=b""),
    "audio-truncated-wav": audio(400, "file", data=b"RIFF\x00\x00\x00\x00WAVEfmt "),
    "audio-too-large": audio(413, "file", data=b"\0" * BIG_AUDIO),
    "audio-format": audio(400, "response_format", response_format="xml"),
    "audio-temperature-nan": audio(400, "temperature", temperature="nan"),
    "audio-temperature-word": audio(400, "temperature", temperature="warm"),
    "audio-granularity": Bad("POST", "/v1/audio/transcriptions", 400, "timestamp_granularities[]",
                             {"files": {"file": ("a.wav", b"x")},
                              "data": {"timestamp_granularities[]": "hour"}}),
    "audio-chat-model": audio(400, "model", model="smollm2"),
    "audio-unknown-model": audio(404, "model", model="no-such-model"),
    "translation-garbage": audio(400, "file", path="/v1/audio/translations"),
    "translation-chat-model": audio(400, "model", path="/v1/audio/translations",
                                    model="smollm2"),
    # models and caches
    "model-unknown": Bad("GET", "/v1/models/no-such-model", 404, "model"),
    "model-odd-bytes": Bad("GET", "/v1/models/%FF%00", 404, "model"),
    "cache-session-unknown": Bad("DELETE", "/v1/cache/sessions/no-such-session", 404, "key"),
}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    # One connection for the whole module: a case that resets it fails the next check
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as c:
        yield c


def _local_port(r: httpx.Response) -> int:
    return int(r.extensions["network_stream"].get_extra_info("client_addr")[1])


def assert_envelope(r: httpx.Response, status: int, param: str | None = "?") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    assert not LEAKS.search(err["message"]), err["message"]
    if param != "?":
        assert err["param"] == param, err


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_a_4xx_and_keeps_the_connection(client: httpx.Client, case: Bad) -> None:
    r = client.request(case.method, case.path, **case.request)
    assert_envelope(r, case.status, case.param)
    assert r.headers.get("connection") != "close"
    ok = client.post("/v1/chat/completions", json=OK_CHAT)
    assert ok.status_code == 200, ok.text
    assert _local_port(ok) == _local_port(r), "the connection was not kept"


def _strict(text: str) -> Any:
    """json.loads without NaN/Infinity, which no JSON parser but Python's accepts."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _logprobs(value: Any, inside: bool = False) -> Iterator[float]:
    """Every float under a key that names logprobs (each API's shape: the chat and
    Responses lists, completions' parallel lists and {token: logprob} maps)."""
    if isinstance(value, float) and inside:
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _logprobs(item, inside or "logprob" in key)
    elif isinstance(value, list):
        for item in value:
            yield from _logprobs(item, inside)


EXTREME_LOGPROBS = {
    "/v1/chat/completions": {"messages": HI, "max_tokens": 3, "logprobs": True,
                             "top_logprobs": 20},
    "/v1/completions": {"prompt": "hi", "max_tokens": 3, "logprobs": 5},
    "/v1/responses": {"input": "hi", "max_output_tokens": 3, "top_logprobs": 20,
                      "include": ["message.output_text.logprobs"]},
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("penalty", [1e-30, 5e-324])
@pytest.mark.parametrize("path", EXTREME_LOGPROBS)
def test_extreme_penalty_logprobs_are_strict_json(client: httpx.Client, path: str,
                                                  penalty: float, stream: bool) -> None:
    body = {**EXTREME_LOGPROBS[path], "repetition_penalty": penalty, "stream": stream}
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    if stream:
        payloads = [_strict(line[6:]) for line in r.text.splitlines()
                    if line.startswith("data: ") and line != "data: [DONE]"]
    else:
        payloads = [_strict(r.text)]
    values = [v for p in payloads for v in _logprobs(p)]
    assert all(-9999.0 <= v <= 0.0 for v in values), values
    # 5e-324 is 0 in float32: every prompt token's logit is +inf, the reply may be empty
    assert values or penalty < 1e-300


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63), 2**63])
def test_seed_extremes_work_and_repeat(client: httpx.Client, seed: int) -> None:
    body = {**OK_CHAT, "max_tokens": 3, "temperature": 1.0, "n": 2, "seed": seed}
    first, again = (client.post("/v1/chat/completions", json=body) for _ in range(2))
    assert first.status_code == again.status_code == 200, first.text
    texts = [[c["message"]["content"] for c in r.json()["choices"]] for r in (first, again)]
    assert texts[0] == texts[1]


def test_underflowing_temperature_and_top_p_are_greedy(client: httpx.Client) -> None:
    """1e-40 and 5e-324 are 0 in float32: still the likeliest tokens, not token 0."""
    base = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 3}
    texts = [client.post("/v1/completions", json={**base, **extra}).json()["choices"][0]["text"]
             for extra in ({"temperature": 0}, {"temperature": 1e-40},
                           {"temperature": 1.0, "top_p": 5e-324})]
    assert "Paris" in texts[0] and texts[1] == texts[0] and texts[2] == texts[0], texts
