"""End-to-end: `mlxd --tensor-parallel 2`, two ranks over MLX's ring backend on loopback,
each holding half of SmolLM2's layers (issue 13). Greedy replies equal the single-process
server's token for token, batched and over a cached prefix; a disconnect clears the
request's cache on every rank; rank 1 dying ends the server with a clear error."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Server, run_server

PROMPTS = [
    "Name three colours.",
    "What is the capital of France?",
    "Count from one to five.",
    "Say hello in Spanish.",
    "What do bees make?",
    "Give me a word that rhymes with cat.",
    "What is two plus two?",
    "Name a large animal.",
]
SYSTEM = "You are a terse assistant for a quiz about everyday facts. " * 6
TOKENS = 24


@pytest.fixture(scope="module")
def tp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tp")
    with run_server(tmp, "--tensor-parallel", "2", env={"MLXD_KV_DIR": ""}) as srv:
        yield srv


def _ask(url: str, prompt: str) -> dict:
    body = {"model": "smollm2", "max_tokens": TOKENS, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": prompt}]}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _burst(url: str) -> list[dict]:
    _ask(url, "Hello.")  # the system prompt is now cached: the burst reuses it
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda p: _ask(url, p), PROMPTS))


def _rank_figures(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for m in re.finditer(r'^mlxd_(rank_\w+)\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        name = m.group(1) + (f":{labels['kind']}" if "kind" in labels else "")
        out[(name, labels["rank"])] = float(m.group(3))
    return out


def _wait_for(check: object, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def test_greedy_replies_equal_the_single_process_server(tp_server: Server,
                                                        server: Server) -> None:
    sharded, whole = _burst(tp_server.url), _burst(server.url)
    for prompt, a, b in zip(PROMPTS, sharded, whole):
        assert a["choices"][0]["message"]["content"] == \
            b["choices"][0]["message"]["content"], prompt
        assert a["usage"]["completion_tokens"] == b["usage"]["completion_tokens"]
    cached = [r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in sharded]
    assert min(cached) > 0, cached


def test_every_rank_reports_its_memory(tp_server: Server) -> None:
    _ask(tp_server.url, "Name a fruit.")
    figures = {}

    def reported() -> bool:
        figures.update(_rank_figures(tp_server.url))
        return all(figures.get(("rank_kv_resident_bytes", r), 0) > 0 for r in "01")

    _wait_for(reported, f"ranks did not report their KV shards: {figures}")
    for rank in "01":
        assert figures[("rank_memory_bytes:active", rank)] > 0
    # rank 0 holds the larger shard (2 of SmolLM2's 3 KV heads): its budget bounds both
    assert figures[("rank_kv_resident_bytes", "1")] < figures[("rank_kv_resident_bytes", "0")]


def test_a_disconnect_aborts_on_every_rank(tp_server: Server) -> None:
    body = {"model": "smollm2", "max_tokens": 2000, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    with httpx.Client(timeout=120) as c, \
            c.stream("POST", tp_server.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        _wait_for(lambda: _rank_figures(tp_server.url).get(("rank_batch_rows", "1")) == 1,
                  "rank 1 never showed the stream in its batch")
    # closed: the abort reaches rank 1 as cache operations, and its batch empties
    _wait_for(lambda: _rank_figures(tp_server.url).get(("rank_batch_rows", "1")) == 0 and
              _rank_figures(tp_server.url).get(("rank_caches", "1")) == 0,
              "rank 1 still holds the aborted stream's cache")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _rank_pid(launcher: int, rank: int) -> int:
    for pid in _children(launcher):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"MLX_RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no rank {rank} under {launcher}")


def test_a_rank_stuck_in_a_collective_cannot_hold_streams_open(tmp_path: Path) -> None:
    """Rank 1 stopped: rank 0's engine waits in a collective that never completes. The
    launcher's word that a rank is gone (what it sends when one exits) still ends the
    stream with the reason, from the event loop, without the engine thread."""
    body = {"model": "smollm2", "max_tokens": 2000, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    with run_server(tmp_path, "--tensor-parallel", "2", env={"MLXD_KV_DIR": ""}) as srv, \
            httpx.Client(timeout=60) as c, \
            c.stream("POST", srv.url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        rank1 = _rank_pid(srv.proc.pid, 1)
        os.kill(rank1, signal.SIGSTOP)
        try:
            time.sleep(1.0)  # rank 0 is now waiting on rank 1
            os.kill(_rank_pid(srv.proc.pid, 0), signal.SIGUSR1)
            tail = [line for line in lines if line.startswith("data: ")]
        finally:
            os.kill(rank1, signal.SIGKILL)
        assert tail[-1] == "data: [DONE]", tail[-3:]
        final = json.loads(tail[-2].removeprefix("data: "))
        assert final["error"]["code"] == "tensor_parallel_group_lost", final
        assert srv.proc.wait(60) == 1


def test_rank_1_dying_ends_the_server_with_a_clear_error(tp_server: Server) -> None:
    """Last in this module: it takes the group down."""
    body = {"model": "smollm2", "max_tokens": 2000, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    events = []
    with httpx.Client(timeout=60) as c, \
            c.stream("POST", tp_server.url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
        os.kill(_rank_pid(tp_server.proc.pid, 1), signal.SIGKILL)
        try:
            for line in lines:  # the stream must end, not hang
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line.removeprefix("data: ")))
        except httpx.RemoteProtocolError as exc:
            tp_server.proc.wait(60)
            raise AssertionError(
                f"the stream was cut: {exc}\n{tp_server.log_text()[-6000:]}") from exc
    errors = [e["error"]["message"] for e in events if "error" in e]
    assert errors and ("tensor-parallel" in errors[-1] or "peer" in errors[-1]), events[-3:]
    assert tp_server.proc.wait(60) == 1
    log = tp_server.log_text()
    assert "tensor-parallel rank 1 exited" in log or "tensor-parallel group lost" in log
