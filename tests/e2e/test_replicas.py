"""End-to-end: two mlxd replicas behind HAProxy with deploy/haproxy.cfg.in (issue 13's
replica setup). Sessions keep their replica, so turn 2 reuses turn 1's resident cache;
Responses conversations follow their response id; with one replica stopped its sessions
answer on the other."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from tests.harness import ROOT, Server, free_port, run_server

sys.path.insert(0, str(ROOT / "deploy"))
import replicas  # noqa: E402

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (Debian package)")

SESSIONS = 20
REPLY_TOKENS = 4


@dataclass(slots=True)
class Cluster:
    url: str
    replicas: list[Server]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    env = {"MLXD_RESPONSES_DIR": str(tmp / "responses")}
    with ExitStack() as stack:
        servers = [stack.enter_context(run_server(tmp / f"r{i}", env=env)) for i in (1, 2)]
        port = free_port()
        config = tmp / "haproxy.cfg"
        config.write_text(replicas.render(f"127.0.0.1:{port}",
                                          [s.url.removeprefix("http://") for s in servers]))
        assert HAPROXY is not None
        log = tmp / "haproxy.log"
        with log.open("wb") as out:
            proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=out,
                                     stderr=subprocess.STDOUT)
        stack.callback(proxy.wait, 10)
        stack.callback(proxy.terminate)
        url = f"http://127.0.0.1:{port}"
        _wait_until(lambda: _up(url) or proxy.poll() is not None,
                    "proxy never answered /health")
        assert proxy.poll() is None and _up(url), log.read_text()[-2000:]
        yield Cluster(url, servers)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until(check: object, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.2)


def _system(i: int) -> str:
    # long enough that a cold turn 2 would show: ~150 tokens of its own per session
    return f"Session {i}. " + " ".join(f"fact {i}-{j}: the number {i * 31 + j}." for j in range(25))


def _chat(c: httpx.Client, i: int, messages: list[dict[str, str]],
          **how: dict[str, str] | str) -> dict:
    r = c.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages,
                                              "max_tokens": REPLY_TOKENS, "temperature": 0,
                                              **how.get("body", {})},  # type: ignore[dict-item]
               headers=how.get("headers", {}))  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return r.json()


def _first(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": _system(i)}, {"role": "user", "content": "Hi."}]


def _key(i: int) -> dict[str, dict[str, str]]:
    # half the sessions name themselves by header, half by the body's prompt_cache_key
    return {"headers": {"X-Session-ID": f"s{i}"}} if i % 2 else \
        {"body": {"prompt_cache_key": f"s{i}"}}


def test_sessions_keep_their_replica(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=120) as c:
        for i in range(SESSIONS):
            first = _first(i)
            one = _chat(c, i, first, **_key(i))
            second = [*first, {"role": "assistant",
                               "content": one["choices"][0]["message"]["content"]},
                      {"role": "user", "content": "And then?"}]
            two = _chat(c, i, second, **_key(i))
            cached = two["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached >= one["usage"]["prompt_tokens"], (i, one["usage"], two["usage"])


def test_responses_follow_their_previous_response(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=120) as c:
        for i in range(4):
            body = {"model": "smollm2", "instructions": _system(100 + i), "input": "Hi.",
                    "max_output_tokens": REPLY_TOKENS, "temperature": 0}
            one = c.post("/v1/responses", json=body)
            assert one.status_code == 200, one.text
            assert one.headers["x-mlxd-response-id"] == one.json()["id"]
            two = c.post("/v1/responses", json={**body, "input": "And then?",
                                                "previous_response_id": one.json()["id"]})
            assert two.status_code == 200, two.text
            usage = two.json()["usage"]
            assert usage["input_tokens_details"]["cached_tokens"] >= \
                one.json()["usage"]["input_tokens"], usage


def test_a_stopped_replicas_sessions_answer_on_the_other(cluster: Cluster) -> None:
    """Last in this module: it stops replica 1 (its fixture's stop is then a no-op)."""
    with httpx.Client(base_url=cluster.url, timeout=120) as c:
        stored = c.post("/v1/responses", json={"model": "smollm2", "input": "Hello.",
                                               "max_output_tokens": REPLY_TOKENS})
        assert stored.status_code == 200
        down = cluster.replicas[0]
        down.proc.terminate()
        down.proc.wait(30)
        time.sleep(1.5)  # a few health checks: the proxy takes it out
        for i in range(SESSIONS):
            reply = _chat(c, i, _first(i), **_key(i))
            assert reply["choices"][0]["message"]["content"]
        # a stored response continues wherever it was made: the directory is shared
        again = c.post("/v1/responses", json={"model": "smollm2", "input": "Again.",
                                              "previous_response_id": stored.json()["id"],
                                              "max_output_tokens": REPLY_TOKENS})
        assert again.status_code == 200, again.text
