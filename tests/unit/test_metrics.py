"""app/metrics.py and the request log middleware, without a model or a server."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from app.api.request_id import RequestIdMiddleware, log_line
from app.metrics import UNMATCHED_ROUTE, EngineState, KVState, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def test_observations_and_published_state_are_rendered() -> None:
    m = Metrics()
    tokens = m.model("tiny")
    tokens.ttft.observe(0.2)
    tokens.itl.observe(0.01)
    tokens.itl.observe(0.02)
    tokens.finished(prompt=12, completion=3, cached=8)
    m.loaded("tiny", "chat", 1.5)
    m.transcribed("whisper", audio_seconds=10.0, wall_seconds=2.0)
    m.embedded("bert", [[1, 2, 3], [4]])
    m.request("/v1/chat/completions", 200, 0.3)
    m.publish(EngineState(waiting={"tiny": 2}, running={"tiny": 3},
                          kv={"tiny": KVState(resident_bytes=4096, budget_bytes=1 << 20,
                                              lookups=4, hits=3)},
                          mlx_active_bytes=10, mlx_peak_bytes=20, mlx_cache_bytes=5))
    s = samples(m)
    assert value(s, "mlxd_time_to_first_token_seconds_count", model="tiny") == 1
    assert value(s, "mlxd_inter_token_latency_seconds_count", model="tiny") == 2
    assert value(s, "mlxd_prompt_tokens_total", model="tiny") == 12
    assert value(s, "mlxd_cached_prompt_tokens_total", model="tiny") == 8
    assert value(s, "mlxd_completion_tokens_total", model="tiny") == 3
    assert value(s, "mlxd_model_load_seconds", model="tiny", kind="chat") == 1.5
    assert value(s, "mlxd_transcription_realtime_factor_sum", model="whisper") == 5.0
    assert value(s, "mlxd_embedding_inputs_total", model="bert") == 2
    assert value(s, "mlxd_embedding_tokens_total", model="bert") == 4
    assert value(s, "mlxd_http_requests_total", route="/v1/chat/completions",
                 status="200") == 1
    assert value(s, "mlxd_waiting_sequences", model="tiny") == 2
    assert value(s, "mlxd_running_sequences", model="tiny") == 3
    assert value(s, "mlxd_kv_resident_bytes", model="tiny") == 4096
    assert value(s, "mlxd_kv_budget_bytes", model="tiny") == 1 << 20
    assert value(s, "mlxd_kv_prefix_hit_ratio", model="tiny") == 0.75
    assert value(s, "mlxd_kv_prefix_lookups_total", model="tiny") == 4
    assert value(s, "mlxd_mlx_active_memory_bytes") == 10
    assert value(s, "mlxd_mlx_peak_memory_bytes") == 20
    assert value(s, "mlxd_mlx_cache_memory_bytes") == 5


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # no "Duplicated timeseries" error either
    a.request("/x", 200, 0.1)
    assert ("mlxd_http_requests_total", frozenset({("route", "/x"), ("status", "200")})) \
        not in samples(b)


def test_openmetrics_when_asked() -> None:
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_log_line_quotes_odd_values_and_drops_none() -> None:
    line = log_line(request_id="req_1", path="/a b\nc", status=200, ttfb=None)
    assert line == 'request_id=req_1 path="/a b\\nc" status=200'


def _app() -> FastAPI:
    app = FastAPI()
    app.state.metrics = Metrics()
    app.add_middleware(RequestIdMiddleware)

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise HTTPException(404)
        return {"id": item_id}

    return app


async def test_middleware_counts_route_templates_and_logs_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    app = _app()
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
    with caplog.at_level(logging.INFO, logger="app.api.request_id"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/items/1", "/items/2", "/items/missing", "/nowhere/1", "/nowhere/2"):
                r = await client.get(path, headers={"x-request-id": "abc"})
                assert r.headers["x-request-id"] == "abc"
    s = samples(app.state.metrics)
    assert value(s, "mlxd_http_requests_total", route="/items/{item_id}", status="200") == 2
    assert value(s, "mlxd_http_requests_total", route="/items/{item_id}", status="404") == 1
    assert value(s, "mlxd_http_requests_total", route=UNMATCHED_ROUTE, status="404") == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "app.api.request_id"]
    assert len(lines) == 5
    first = dict(pair.split("=", 1) for pair in lines[0].split())
    assert first["request_id"] == "abc" and first["method"] == "GET"
    assert first["route"] == "/items/{item_id}" and first["path"] == "/items/1"
    assert first["status"] == "200" and first["complete"] == "true"
    assert first["client"] == "10.0.0.1:1234"
    assert float(first["duration"]) >= float(first["ttfb"]) >= 0
