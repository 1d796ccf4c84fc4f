"""32 concurrent streams, a quarter of them hanging up at random points, three rounds with
the KV cache off: every finished stream is well formed, the engine is left with no
sequences, and the server's memory does not grow round over round."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.engine.engine import IDLE_WAIT_SECONDS
from tests.harness import Server, run_server

STREAMS = 32
ROUNDS = 4
MAX_TOKENS = 8


def rss_bytes(server: Server) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def gauge_sum(server: Server, *names: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(s.value for fam in text_string_to_metric_families(text)
               if fam.name in names for s in fam.samples)


def engine_sequences(server: Server) -> float:
    return gauge_sum(server, "mlxd_running_sequences", "mlxd_waiting_sequences")


async def one_stream(client: httpx.AsyncClient, i: int, hang_up_after: int | None
                     ) -> list[str] | None:
    body = {"model": "smollm2", "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0.7,
            "seed": i, "messages": [{"role": "user", "content": f"Say something about {i}."}]}
    lines: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                if hang_up_after is not None and len(lines) >= hang_up_after:
                    return None  # leaving the block closes the connection mid-stream
    return lines


def check_well_formed(lines: list[str]) -> None:
    assert lines[-1] == "[DONE]", lines[-3:]
    chunks = [json.loads(x) for x in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


async def one_round(server: Server, rng: random.Random) -> None:
    hang_ups = set(rng.sample(range(STREAMS), STREAMS // 4))
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        results = await asyncio.gather(*(
            one_stream(client, i, rng.randint(1, MAX_TOKENS) if i in hang_ups else None)
            for i in range(STREAMS)))
    finished = [r for r in results if r is not None]
    assert len(finished) == STREAMS - len(hang_ups)
    for lines in finished:
        check_well_formed(lines)


def test_streams_with_disconnects_leave_nothing_behind(tmp_path: Path) -> None:
    rng = random.Random(14)
    with run_server(tmp_path, "--no-kv-cache") as srv:
        rss = []
        for _ in range(ROUNDS):
            asyncio.run(one_round(srv, rng))
            deadline = time.monotonic() + 10
            while engine_sequences(srv) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert engine_sequences(srv) == 0
            # the idle engine gives MLX's buffer cache and glibc's free heap back at once
            deadline = time.monotonic() + 10 * IDLE_WAIT_SECONDS
            while gauge_sum(srv, "mlxd_mlx_cache_memory_bytes") and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            assert gauge_sum(srv, "mlxd_mlx_cache_memory_bytes") == 0
            rss.append(rss_bytes(srv))
        # The first two rounds are warm-up: their batch shapes fill the allocators' arenas
        # (glibc's, per thread, and the CPU kernels' work buffers) to a plateau that one CI
        # run reached only in round 2 (+16%, then +0.1%). A leak of what the rounds leave
        # behind keeps growing after it.
        assert max(rss[2:]) <= rss[1] * 1.10, rss
