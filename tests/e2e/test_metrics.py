"""GET /metrics end to end: after chat (streamed and not), embeddings and a transcription,
the Prometheus text parses and its counters move by what the responses report."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Server

CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/"
            "sense_and_sensibility_01_austen_64kb-0880.wav")
MAX_TOKENS = 6
SETTLE_SECONDS = 5.0  # the engine publishes its gauges once per loop turn

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(server: Server) -> Samples:
    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (0 when none)."""
    return sum(v for got, v in samples.get(name, [])
               if all(got.get(k) == want for k, want in labels.items()))


def wait_for(server: Server, ready: Callable[[Samples], bool]) -> Samples:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        samples = scrape(server)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_metrics_follow_the_requests(server: Server, client: openai.OpenAI) -> None:
    before = scrape(server)
    msgs = [{"role": "user", "content": "Name a colour."}]
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=msgs, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    streamed = chunks[-1].usage
    full = client.chat.completions.create(model="smollm2", messages=msgs, temperature=0,
                                          max_tokens=MAX_TOKENS)
    emb = client.embeddings.create(model="all-minilm-l6-v2", input=["one", "two words"])
    with CLIP.open("rb") as fh:
        client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert streamed is not None and full.usage is not None
    chat_model, emb_model = full.model, emb.model
    usages = [streamed, full.usage]

    def requests(s: Samples, route: str) -> float:
        return total(s, "mlxd_http_requests_total", route=route, status="200") - \
            total(before, "mlxd_http_requests_total", route=route, status="200")

    after = wait_for(server, lambda s: requests(s, "/v1/audio/transcriptions") >= 1
                     and total(s, "mlxd_kv_resident_bytes", model=chat_model) > 0)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert requests(after, "/v1/chat/completions") == 2
    assert requests(after, "/v1/embeddings") == 1
    assert requests(after, "/v1/audio/transcriptions") == 1

    completion = sum(u.completion_tokens for u in usages)
    assert grew("mlxd_time_to_first_token_seconds_count", model=chat_model) == 2
    assert grew("mlxd_inter_token_latency_seconds_count", model=chat_model) == completion - 2
    assert grew("mlxd_time_to_first_token_seconds_sum", model=chat_model) > 0
    assert grew("mlxd_prompt_tokens_total", model=chat_model) == \
        sum(u.prompt_tokens for u in usages)
    assert grew("mlxd_completion_tokens_total", model=chat_model) == completion
    cached = sum(u.prompt_tokens_details.cached_tokens or 0 for u in usages
                 if u.prompt_tokens_details is not None)
    assert grew("mlxd_cached_prompt_tokens_total", model=chat_model) == cached
    assert grew("mlxd_embedding_inputs_total", model=emb_model) == 2
    assert grew("mlxd_transcription_realtime_factor_count") >= 1
    assert grew("mlxd_transcription_audio_seconds_total") > 0

    assert total(after, "mlxd_kv_resident_bytes", model=chat_model) > 0
    assert total(after, "mlxd_kv_budget_bytes", model=chat_model) > 0
    assert 0 <= total(after, "mlxd_kv_prefix_hit_ratio", model=chat_model) <= 1
    assert total(after, "mlxd_kv_prefix_lookups_total", model=chat_model) >= 2
    assert total(after, "mlxd_mlx_active_memory_bytes") > 0
    assert total(after, "mlxd_mlx_peak_memory_bytes") >= \
        total(after, "mlxd_mlx_active_memory_bytes")
    assert "mlxd_mlx_cache_memory_bytes" in after
    assert total(after, "mlxd_running_sequences", model=chat_model) == 0
    assert total(after, "mlxd_waiting_sequences", model=chat_model) == 0
    assert total(after, "mlxd_model_load_seconds", model=chat_model, kind="chat") > 0
    assert total(after, "mlxd_model_load_seconds", model=emb_model, kind="embedding") > 0
    assert total(after, "mlxd_model_load_seconds", kind="transcription") > 0


def test_unknown_paths_share_one_label(server: Server) -> None:
    for path in ("/no/such/a", "/no/such/b"):
        assert httpx.get(server.url + path, timeout=30).status_code == 404
    after = wait_for(server, lambda s: total(s, "mlxd_http_requests_total",
                                             route="unmatched", status="404") >= 2)
    assert total(after, "mlxd_http_requests_total", route="unmatched", status="404") >= 2
    assert not [labels for labels, _ in after["mlxd_http_requests_total"]
                if labels["route"].startswith("/no/such")]


def test_one_log_line_per_request(server: Server) -> None:
    r = httpx.get(server.url + "/v1/models", headers={"x-request-id": "metrics-log-1"},
                  timeout=30)
    assert r.status_code == 200
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        lines = [ln for ln in server.log_text().splitlines()
                 if "request_id=metrics-log-1 " in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 1, lines
    fields = dict(p.split("=", 1) for p in lines[0].split("request_id=", 1)[1].split()[1:])
    assert fields["method"] == "GET" and fields["route"] == "/v1/models"
    assert fields["status"] == "200" and fields["complete"] == "true"
    assert float(fields["duration"]) >= float(fields["ttfb"]) >= 0
    assert fields["client"].startswith("127.0.0.1:")
