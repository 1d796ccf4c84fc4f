"""/v1/embeddings end to end with the openai SDK on the default embedding model."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.harness import Server

PARAPHRASES = [
    ("How do I reset my password?", "What are the steps to change my login password?"),
    ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ("It is raining heavily today.", "There is a downpour this afternoon."),
]


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def _vectors(client: openai.OpenAI, texts: list[str], **kw: object) -> np.ndarray:
    r = client.embeddings.create(model="all-minilm-l6-v2", input=texts, **kw)  # type: ignore[arg-type]
    assert [d.index for d in r.data] == list(range(len(texts)))
    return np.array([d.embedding for d in r.data], dtype=np.float32)


def test_paraphrases_are_closer_than_unrelated_pairs(client: openai.OpenAI) -> None:
    texts = [t for pair in PARAPHRASES for t in pair]
    v = _vectors(client, texts)
    assert v.shape == (6, 384)
    sim = v @ v.T
    for i in range(0, 6, 2):
        related = sim[i, i + 1]
        unrelated = [sim[i, j] for j in range(6) if j not in (i, i + 1)]
        assert related > max(unrelated) + 0.2, (i, related, unrelated)


def test_batch_equals_one_by_one_and_base64_equals_floats(client: openai.OpenAI) -> None:
    texts = ["short", "a somewhat longer sentence about embeddings and servers", "mid length"]
    batch = _vectors(client, texts)
    alone = np.concatenate([_vectors(client, [t]) for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    raw = httpx.post(str(client.base_url) + "embeddings", timeout=60, json={
        "model": "all-minilm-l6-v2", "input": texts, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                        for d in raw["data"]])
    np.testing.assert_array_equal(decoded, batch)
    # The SDK asks for base64 by default and decodes it itself.
    sdk = client.embeddings.create(model="text-embedding-3-small", input=texts[0])
    np.testing.assert_allclose(np.array(sdk.data[0].embedding), batch[0], atol=1e-6)
    assert sdk.model == "all-minilm-l6-v2" and sdk.usage.prompt_tokens > 0


def test_token_arrays_embed_as_their_text(client: openai.OpenAI, server: Server) -> None:
    text = "the quick brown fox"
    # bert-base-uncased ids of "the quick brown fox" (no [CLS]/[SEP]).
    ids = [1996, 4248, 2829, 4419]
    by_text = _vectors(client, [text])
    by_ids = client.embeddings.create(model="all-minilm-l6-v2", input=[ids])
    np.testing.assert_allclose(np.array(by_ids.data[0].embedding), by_text[0], atol=1e-5)
    assert by_ids.usage.prompt_tokens == len(ids) + 2


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": [[99999999]]}, "input"),
    ({"input": "word " * 400}, "input"),
    ({"input": "hi", "dimensions": 128}, "dimensions"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "hi", "model": "smollm2"}, "model"),
    ({"input": 5}, "input"),
])
def test_bad_input_is_a_400(server: Server, body: dict[str, object], param: str) -> None:
    r = httpx.post(server.api + "/embeddings", json={"model": "all-minilm", **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert param in (err["param"] or "") or param in err["message"]


def test_listed_with_kind(server: Server) -> None:
    data = httpx.get(server.api + "/models", timeout=30).json()["data"]
    entry = next(m for m in data if m["id"] == "all-minilm-l6-v2")
    assert entry["kind"] == "embedding"
