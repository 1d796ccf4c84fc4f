"""Resident KV caches end to end: real server, openai SDK, restart persistence."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from tests.harness import Server, run_server


def test_four_turn_conversation_reuses_cache(server: Server) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "system", "content": "You are terse."}]
    prev_total = 0
    for turn, question in enumerate(["Name a fruit.", "Name a colour.", "Name a city.",
                                     "Name an animal."]):
        messages.append({"role": "user", "content": question})
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=messages, temperature=0, max_tokens=12,  # type: ignore[arg-type]
            prompt_cache_key="e2e-conv")
        r = raw.parse()
        assert r.usage is not None
        cached = r.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
        if turn:
            assert cached >= prev_total, (turn, cached, prev_total)
            assert raw.headers["x-mlxd-cache"].startswith("hit")
        prev_total = r.usage.prompt_tokens + r.usage.completion_tokens
        messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
    sessions = httpx.get(server.api + "/cache/sessions").json()["data"]
    mine = [s for s in sessions if s["session"] == "e2e-conv"]
    assert mine and mine[0]["tokens"] >= prev_total - 1 and mine[0]["bytes"] > 0


def test_streamed_usage_reports_cached_tokens(server: Server) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Describe the moon in one sentence."}]
    client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4,  # type: ignore[arg-type]
                                   extra_headers={"X-Session-ID": "stream-s"})
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=msgs, max_tokens=4, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_headers={"X-Session-ID": "stream-s"}))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 1


def test_delete_session(server: Server) -> None:
    client = openai.OpenAI(base_url=server.api, api_key="x", max_retries=0, timeout=120)
    client.chat.completions.create(model="smollm2", max_tokens=2, prompt_cache_key="to-delete",
                                   messages=[{"role": "user", "content": "Hi"}])
    assert httpx.delete(server.api + "/cache/sessions/to-delete").status_code == 200
    r = httpx.delete(server.api + "/cache/sessions/to-delete")
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_persistence_across_restart(tmp_path: Path) -> None:
    kv_dir = tmp_path / "kv"
    env = {"MLXD_KV_DIR": str(kv_dir)}
    msgs = [{"role": "user", "content": "List three rivers of Europe, briefly."}]
    with run_server(tmp_path, env=env) as srv:
        client = openai.OpenAI(base_url=srv.api, api_key="x", max_retries=0, timeout=120)
        first = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=6,  # type: ignore[arg-type]
                                               temperature=0, prompt_cache_key="persist-me")
    files = list(kv_dir.rglob("*.safetensors"))
    assert files, "graceful shutdown wrote no session cache"
    with run_server(tmp_path, env=env) as srv:
        client = openai.OpenAI(base_url=srv.api, api_key="x", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=msgs, max_tokens=6, temperature=0,  # type: ignore[arg-type]
            prompt_cache_key="persist-me")
        again = raw.parse()
        assert again.usage.prompt_tokens_details.cached_tokens >= \
            again.usage.prompt_tokens - 1  # type: ignore[union-attr]
        assert again.choices[0].message.content == first.choices[0].message.content
    # A cache written for another model (fingerprint) is never used.
    model_dir = files[0].parent
    for f in files:
        f.unlink()
    other = _fake_other_model_file(model_dir)
    with run_server(tmp_path, env=env) as srv:
        client = openai.OpenAI(base_url=srv.api, api_key="x", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=msgs, max_tokens=2, temperature=0,  # type: ignore[arg-type]
            prompt_cache_key="persist-me")
        assert raw.parse().usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
        assert "other-model" in raw.headers["x-mlxd-cache"]
    assert other.exists()  # kept on disk (it may belong to a model served elsewhere)


def _fake_other_model_file(model_dir: Path) -> Path:
    """Write a session file for 'persist-me' whose fingerprint names another model."""
    import mlx.core as mx

    from app.kv import persist

    layers = [(mx.zeros((1, 3, 4, 64)), mx.zeros((1, 3, 4, 64))) for _ in range(30)]
    path = persist.session_path(model_dir, "persist-me")
    persist.save_entry(path, (1, 2, 3, 4), layers, "persist-me", "another-model")
    return path
