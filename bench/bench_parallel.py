"""Past one device, on this machine: tensor parallelism and replicas, side by side, ratios.

    .venv/bin/python bench/bench_parallel.py [--rounds 2] [--only tp,replicas]

tp: `mlxd` against `mlxd --tensor-parallel 2` (two ranks over MLX's ring backend on
    loopback, each with half of every layer) on the default GGUF, rounds alternating, one
    server busy at a time: single-stream decode tok/s (64 greedy tokens), the first token
    of a ~1k-token prompt no cache can help, and 8 concurrent streams' aggregate tok/s.
replicas: one mlxd pinned to core 0 against two pinned to cores 0 and 1 behind HAProxy
    (deploy/haproxy.cfg.in: sessions kept on a replica); 16 sessions stream at once, two
    turns each; aggregate tok/s per turn. Routing overhead shows as a ratio below 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))

import replicas  # noqa: E402
from common import (  # noqa: E402
    PromptMaker,
    Server,
    chat_body,
    client,
    ensure_hf_folder,
    environment_note,
    fmt,
    fmt_ratio,
    gguf_path,
    md_table,
    median,
    ours_spec,
    ratio,
    running,
    stream_chat,
    write_report,
)

from tests.harness import free_port  # noqa: E402

DECODE_TOKENS = 64
TTFT_PROMPT_TOKENS = 1024
STREAMS = 8
STREAM_TOKENS = 48
SESSIONS = 16
SESSION_TOKENS = 64
PINNED_ENV = {"OPENBLAS_NUM_THREADS": "1", "MLXD_KV_DIR": ""}


async def _decode_rate(url: str, prompts: PromptMaker) -> float | None:
    async with client(600) as c:
        body = chat_body([{"role": "user", "content": "Tell me a long story about a fox."}],
                         DECODE_TOKENS)
        await stream_chat(c, url, {**body, "max_tokens": 4})  # warm
        return (await stream_chat(c, url, body)).decode_rate


async def _ttft(url: str, prompts: PromptMaker) -> float | None:
    async with client(600) as c:
        body = chat_body([{"role": "user", "content": prompts.text(TTFT_PROMPT_TOKENS)}], 4)
        return (await stream_chat(c, url, body)).ttft


async def _aggregate(url: str, bodies: list[dict], headers: list[dict[str, str]]
                     ) -> tuple[float, list[str]]:
    """Aggregate completion tok/s of all `bodies` streamed at once, and their texts."""
    async with client(900) as c:
        t0 = time.perf_counter()

        async def one(body: dict, h: dict[str, str]) -> tuple[int, str]:
            async with c.stream("POST", url + "/v1/chat/completions", json=body,
                                headers=h) as r:
                assert r.status_code == 200, await r.aread()
                n, text = 0, ""
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    for choice in data.get("choices") or []:
                        text += (choice.get("delta") or {}).get("content") or ""
                    if data.get("usage"):
                        n = data["usage"]["completion_tokens"]
                return n, text

        done = await asyncio.gather(*(one(b, h) for b, h in zip(bodies, headers)))
        return sum(n for n, _ in done) / (time.perf_counter() - t0), [t for _, t in done]


def bench_tp(rounds: int, prompts: PromptMaker) -> str:
    gguf = gguf_path()
    specs = [ours_spec("tp1", gguf), ours_spec("tp2", gguf, "--tensor-parallel", "2")]
    for s in specs:
        s.env.update({"MLXD_KV_DIR": ""})
    figures: dict[str, dict[str, list[float | None]]] = {
        s.name: {"decode": [], "ttft": [], "agg": []} for s in specs}
    stream_bodies = [chat_body([{"role": "user", "content": f"Story {i}: a fox and a crow."}],
                               STREAM_TOKENS) for i in range(STREAMS)]
    for r in range(rounds):
        for spec in specs:
            print(f"round {r + 1}: {spec.name}", flush=True)
            with running(spec) as srv:
                f = figures[spec.name]
                f["decode"].append(asyncio.run(_decode_rate(srv.base_url, prompts)))
                f["ttft"].append(asyncio.run(_ttft(srv.base_url, prompts)))
                f["agg"].append(asyncio.run(_aggregate(srv.base_url, stream_bodies,
                                                       [{}] * STREAMS))[0])
    rows = []
    for key, label, better in (("decode", "one stream, decode tok/s", "higher"),
                               ("ttft", f"first token, {TTFT_PROMPT_TOKENS}-token prompt, s",
                                "lower"),
                               ("agg", f"{STREAMS} streams, aggregate tok/s", "higher")):
        one, two = figures["tp1"][key], figures["tp2"][key]
        rows.append([label, _span(one), _span(two),
                     fmt_ratio(ratio(median(two), median(one))), better])
    return ("## Tensor parallelism: TP=2 (ring, loopback) against TP=1\n\n" +
            md_table(["figure", "mlxd", "mlxd --tensor-parallel 2", "TP2 / TP1 (median)",
                      "better"], rows) +
            "\n\nTP=1 computes with the CPU wing (packed Q4_1 weights, numpy decode steps); "
            "a TP rank computes with MLX's ops on float32 shards, and every layer adds two "
            "all-reduces over loopback TCP. On two cores the ranks share the cores that one "
            "process already used: this measures the cost, not a speed-up.\n")


@contextmanager
def _pinned(name: str, gguf: Path, core: int) -> Iterator[Server]:
    spec = ours_spec(name, gguf)
    spec.argv = ["taskset", "-c", str(core), *spec.argv]
    spec.env.update(PINNED_ENV)
    with running(spec) as srv:
        yield srv


@contextmanager
def _proxy(servers: list[Server], workdir: Path) -> Iterator[str]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise SystemExit("haproxy not found (Debian: apt-get install haproxy)")
    port = free_port()
    cfg = workdir / "haproxy-bench.cfg"
    cfg.write_text(replicas.render(f"127.0.0.1:{port}",
                                   [s.base_url.removeprefix("http://") for s in servers]))
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _turns(url: str) -> tuple[float, float, float]:
    """Aggregate tok/s of turn 1 and turn 2 (the replies appended) of every session, then
    of the same first turns sent without a session key (the proxy's least-busy choice)."""
    first = [chat_body([{"role": "system", "content": f"You are assistant number {i}."},
                        {"role": "user", "content": "Tell me a story about a fox."}],
                       SESSION_TOKENS) for i in range(SESSIONS)]
    headers = [{"X-Session-ID": f"bench-{i}"} for i in range(SESSIONS)]
    rate1, texts = asyncio.run(_aggregate(url, first, headers))
    second = [{**b, "messages": [*b["messages"], {"role": "assistant", "content": t},
                                 {"role": "user", "content": "And then?"}]}
              for b, t in zip(first, texts)]
    rate2 = asyncio.run(_aggregate(url, second, headers))[0]
    unkeyed = [{**b, "messages": [{"role": "system", "content": f"Unkeyed {i}."},
                                  *b["messages"][1:]]} for i, b in enumerate(first)]
    return rate1, rate2, asyncio.run(_aggregate(url, unkeyed, [{}] * SESSIONS))[0]


def _served(servers: list[Server]) -> list[int]:
    """Chat requests each replica answered (its /metrics)."""
    out = []
    for s in servers:
        text = httpx.get(s.base_url + "/metrics", timeout=10).text
        out.append(int(sum(float(m) for m in re.findall(
            r'^mlxd_http_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)$',
            text, re.M))))
    return out


def bench_replicas(rounds: int) -> str:
    gguf = gguf_path()
    work = Path(__file__).resolve().parent / "out"
    work.mkdir(exist_ok=True)
    results: dict[str, dict[str, list[float | None]]] = {
        k: {"t1": [], "t2": [], "rr": []} for k in ("one", "two")}
    split: list[int] = []
    for r in range(rounds):
        print(f"round {r + 1}: one pinned replica", flush=True)
        with _pinned("rep-one", gguf, 0) as srv:
            for k, v in zip(("t1", "t2", "rr"), _turns(srv.base_url)):
                results["one"][k].append(v)
        print(f"round {r + 1}: two pinned replicas behind haproxy", flush=True)
        with ExitStack() as stack:
            servers = [stack.enter_context(_pinned(f"rep-{c}", gguf, c)) for c in (0, 1)]
            url = stack.enter_context(_proxy(servers, work))
            for k, v in zip(("t1", "t2", "rr"), _turns(url)):
                results["two"][k].append(v)
            split = _served(servers)
    rows = [[label, _span(results["one"][k]), _span(results["two"][k]),
             fmt_ratio(ratio(median(results["two"][k]), median(results["one"][k])), 1.8)]
            for k, label in (("t1", "turn 1, aggregate tok/s"),
                             ("t2", "turn 2 (resident KV), aggregate tok/s"),
                             ("rr", "no session key, aggregate tok/s"))]
    return (f"## Replicas: {SESSIONS} sessions streaming at once, {SESSION_TOKENS} tokens "
            "a reply, two turns\n\n"
            + md_table(["figure", "one replica (core 0)", "two replicas (cores 0, 1) + "
                        "HAProxy", "two / one (target 1.8)"], rows)
            + f"\n\nChat requests per replica in the last round (all three bursts): {split}. "
            "A session goes to the least busy replica when first seen and stays there; the "
            "replica with more sessions sets a burst's end. Requests without a key show the "
            "proxy's own cost.\n")


def _span(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    lo, hi = min(got), max(got)
    return fmt(lo) if len(got) == 1 or fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default="tp,replicas")
    p.add_argument("--out", default="parallel.md")
    args = p.parse_args()
    parts = [f"# Past one device on this machine\n\n`bench/bench_parallel.py --rounds "
             f"{args.rounds} --only {args.only}`\n\n{environment_note()}\n"]
    only = set(args.only.split(","))
    if "tp" in only:
        parts.append(bench_tp(args.rounds, PromptMaker(ensure_hf_folder())))
    if "replicas" in only:
        parts.append(bench_replicas(args.rounds))
    path = write_report(args.out, "\n".join(parts))
    print(path.read_text())


if __name__ == "__main__":
    main()
