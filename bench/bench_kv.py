"""Resident KV caches benchmark: turn-N time to first token in a multi-turn chat.

    .venv/bin/python bench/bench_kv.py [--quick] [--sizes 1000,4000] [--turns 4]

A conversation opens with a ~1k- or ~4k-token document (unique from its first word) and
goes on with short user turns. Compared, on the same float32 HF folder:
  ours       mlxd with resident KV caches, one `prompt_cache_key` per conversation; it plays
             the conversation live, and its replies become the script for the others;
  ours-cold  mlxd --no-kv-cache replaying the exact same messages (every turn cold);
  peer-*     mlx_lm.server replaying the exact same messages with its own prompt cache.
Greedy, same max_tokens everywhere. After each of our conversations, GET /v1/cache/sessions
gives the session's tokens and bytes, compared with layers x 2 x kv_heads x head_dim x 4 B.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PromptMaker,
    Server,
    ServerSpec,
    chat_body,
    client,
    ensure_hf_folder,
    environment_note,
    fmt,
    fmt_ratio,
    gguf_path,
    kv_bytes_per_token,
    llama_spec,
    load_avg,
    md_table,
    median,
    ours_spec,
    peer_spec,
    ratio,
    running,
    stream_chat,
    write_report,
)

FOLLOW_UPS = (
    "Thanks. Now list three words that appear in the notes.",
    "Which of those words do you like best, and why?",
    "Write one more sentence in the same style.",
    "Summarize our conversation in one line.",
    "Give the notes a short title.",
    "Say goodbye politely.",
)
TARGETS = {"cold_warm": 10.0, "peer_ours": 1.5, "bytes_tolerance": 0.10}
REQUEST_TIMEOUT_S = 1800.0


@dataclass(slots=True)
class Turn:
    ttft: float | None
    prompt_tokens: int | None
    cached_tokens: int | None
    reply: str
    cache_header: str | None = None
    capped: bool = False


@dataclass(slots=True)
class Conversation:
    size: int
    rep: int
    key: str
    user_turns: list[str]
    replies: list[str] = field(default_factory=list)
    """The warm server's replies: the script every other server replays."""
    session_tokens: int | None = None
    session_bytes: int | None = None

    def messages(self, turn: int) -> list[dict[str, str]]:
        """Messages sent at `turn` (0-based): history with recorded replies, then the user."""
        out: list[dict[str, str]] = []
        for i in range(turn):
            out += [{"role": "user", "content": self.user_turns[i]},
                    {"role": "assistant", "content": self.replies[i]}]
        return out + [{"role": "user", "content": self.user_turns[turn]}]


@dataclass(slots=True)
class ServerRuns:
    name: str
    description: str
    blas: str = "?"
    turns: dict[tuple[int, int], list[Turn]] = field(default_factory=dict)
    """(size, rep) -> one Turn per conversation turn."""
    notes: list[str] = field(default_factory=list)

    def turn_ttfts(self, size: int, turn: int) -> list[float]:
        vals = [ts[turn].ttft for (s, _), ts in self.turns.items()
                if s == size and turn < len(ts)]
        return [v for v in vals if v is not None]

    def conv_later_ttft(self, size: int, rep: int) -> float | None:
        """Median TTFT over turns 2..N of one conversation."""
        turns = self.turns.get((size, rep), [])
        return median([t.ttft for t in turns[1:]])

    def later_ttft(self, size: int, n_turns: int) -> float | None:
        """Median TTFT over turns 2..N of every repetition (the turn-N figure)."""
        vals = [t for turn in range(1, n_turns) for t in self.turn_ttfts(size, turn)]
        return median(vals)


def make_conversations(cfg: argparse.Namespace, pm: PromptMaker) -> list[Conversation]:
    convs = []
    nonce = f"{int(time.time()) % 100000}"
    for size in cfg.sizes:
        for rep in range(cfg.reps):
            doc = pm.text(size, f" kv{size}")
            first = f"Here are my notes:\n\n{doc}\n\nRead them and tell me what they are about."
            turns = [first, *FOLLOW_UPS[: cfg.turns - 1]]
            convs.append(Conversation(size, rep, f"bench-kv-{nonce}-{size}-{rep}", turns))
    return convs


async def warm_up(srv: Server, pm: PromptMaker, heavy: bool) -> None:
    async with client(REQUEST_TIMEOUT_S) as c:
        await stream_chat(c, srv.base_url, chat_body(
            [{"role": "user", "content": "Say hello."}], 8))
        if heavy:
            await stream_chat(c, srv.base_url, chat_body(
                [{"role": "user", "content": pm.text(600, " warm")}], 4))


async def play(srv: Server, conv: Conversation, cfg: argparse.Namespace, *, live: bool,
               session: bool, cap: float | None) -> list[Turn]:
    """One conversation. live: record the replies (the script); session: send its key."""
    turns: list[Turn] = []
    async with client(REQUEST_TIMEOUT_S) as c:
        for i in range(cfg.turns):
            extra = {"prompt_cache_key": conv.key} if session else {}
            r = await stream_chat(c, srv.base_url,
                                  chat_body(conv.messages(i), cfg.reply_tokens, **extra),
                                  timeout=cap)
            if r.timed_out or r.ttft is None:
                turns.append(Turn(None, None, None, "", capped=True))
                print(f"    {srv.spec.name} {conv.size}/{conv.rep} turn {i + 1}: no first token "
                      f"within {cap}s; conversation abandoned", flush=True)
                break
            if live:
                conv.replies.append(r.text)
            turns.append(Turn(r.ttft, r.prompt_tokens, r.cached_tokens, r.text,
                              r.headers.get("x-mlxd-cache")))
            print(f"    {srv.spec.name} {conv.size}/{conv.rep} turn {i + 1}: TTFT {r.ttft:.2f}s, "
                  f"prompt {r.prompt_tokens}, cached {r.cached_tokens}, "
                  f"{r.headers.get('x-mlxd-cache', '-')} (load {load_avg()})", flush=True)
    return turns


async def session_size(srv: Server, key: str) -> tuple[int | None, int | None]:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
        resp = await c.get(srv.base_url + "/v1/cache/sessions")
        resp.raise_for_status()
    for item in resp.json().get("data", []):
        if item.get("session") == key:
            return item.get("tokens"), item.get("bytes")
    return None, None


async def run_one(srv: Server, runs: ServerRuns, conv: Conversation, cfg: argparse.Namespace,
                  role: str) -> None:
    live = role == "warm"
    cap = cfg.plain_cap if role == "plain" else None
    turns = await play(srv, conv, cfg, live=live, session=live, cap=cap)
    runs.turns[(conv.size, conv.rep)] = turns
    if live:
        conv.session_tokens, conv.session_bytes = await session_size(srv, conv.key)
    else:
        same = sum(t.reply == r for t, r in zip(turns, conv.replies))
        if same < len(turns):
            runs.notes.append(f"{conv.size}/{conv.rep}: {len(turns) - same} of {len(turns)} "
                              "replies differ from the script (the script is still replayed)")


async def bench(groups: list[list[tuple[ServerSpec, str]]], convs: list[Conversation],
                cfg: argparse.Namespace, pm: PromptMaker) -> dict[str, ServerRuns]:
    """Each group's servers run together (idle while another is measured) and take turns
    conversation by conversation; the warm server (defines the script) goes first."""
    out: dict[str, ServerRuns] = {}
    for group in groups:
        with ExitStack() as stack:
            members = []
            for spec, role in group:
                print(f"== {spec.name}: {spec.description}", flush=True)
                srv = stack.enter_context(running(spec))
                runs = out.setdefault(spec.name, ServerRuns(spec.name, spec.description))
                runs.blas = srv.blas()
                await warm_up(srv, pm, heavy=role != "plain")
                members.append((srv, runs, role))
            for conv in convs:
                for srv, runs, role in members:
                    if role != "warm" and len(conv.replies) < cfg.turns:
                        runs.notes.append(f"{conv.size}/{conv.rep}: no script (warm run "
                                          "incomplete); skipped")
                        continue
                    await run_one(srv, runs, conv, cfg, role)
    return out


def report(cfg: argparse.Namespace, runs: dict[str, ServerRuns], convs: list[Conversation],
           per_token: int, argv: list[str]) -> str:
    lines = ["# bench_kv: resident KV caches, turn-N time to first token", "",
             f"`{' '.join(argv)}`", "", environment_note(), "",
             f"Model: SmolLM2-135M-Instruct ({gguf_path().name}) "
             f"{'served as it is by ours' if cfg.ours_on_gguf else 'as a float32 HF folder'}, "
             "greedy. "
             f"{cfg.turns} turns per conversation, {cfg.reply_tokens} reply tokens per turn, "
             f"{cfg.reps} conversation(s) per size. Turn 1 holds a unique document; turns 2.."
             f"{cfg.turns} are short follow-ups. `turn-N` = median TTFT over turns 2..{cfg.turns}.",
             "Mode: " + ("interleaved (servers up together, measured one at a time, "
                         "conversation by conversation)" if cfg.interleave else
                         "sequential (one server up at a time)") + ".", ""]
    names = list(runs)
    for size in cfg.sizes:
        lines += [f"## ~{size}-token first turn", ""]
        rows = []
        for turn in range(cfg.turns):
            row: list[object] = [turn + 1]
            for name in names:
                r = runs[name]
                prompts = [ts[turn].prompt_tokens for (s, _), ts in r.turns.items()
                           if s == size and turn < len(ts)]
                cached = [ts[turn].cached_tokens for (s, _), ts in r.turns.items()
                          if s == size and turn < len(ts)]
                row.append(f"{fmt(median(r.turn_ttfts(size, turn)))} "
                           f"({fmt(prompts[0] if prompts else None)}/"
                           f"{fmt(cached[0] if cached else None)})")
            rows.append(row)
        lines += ["TTFT in s (prompt tokens / cached tokens reported by the server, "
                  "first repetition):", "",
                  md_table(["turn", *names], rows), ""]
    lines += ["## Ratios vs targets", "", ratio_table(cfg, runs), ""]
    lines += ["## Resident cache size", "", bytes_table(convs, per_token), ""]
    notes = [f"- {r.name}: {n}" for r in runs.values() for n in r.notes]
    lines += ["## Servers", "", *[f"- {r.name}: {r.description} (BLAS mapped: {r.blas})"
                                  for r in runs.values()]]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def ratio_table(cfg: argparse.Namespace, runs: dict[str, ServerRuns]) -> str:
    rows = []
    warm = runs.get("ours")
    for size in cfg.sizes:
        w = warm.later_ttft(size, cfg.turns) if warm else None
        cold = runs.get("ours-cold")
        if cold is not None:
            c = cold.later_ttft(size, cfg.turns)
            rows.append([f"~{size}: ours-cold / ours (turn-N)", fmt(c), fmt(w),
                         fmt_ratio(ratio(c, w), TARGETS["cold_warm"]),
                         f"≥{TARGETS['cold_warm']:.0f}×"])
        for name, r in runs.items():
            if not name.startswith("peer"):
                continue
            p = r.later_ttft(size, cfg.turns)
            rows.append([f"~{size}: {name} / ours (turn-N)", fmt(p), fmt(w),
                         fmt_ratio(ratio(p, w), TARGETS["peer_ours"]),
                         f"≥{TARGETS['peer_ours']}×"])
            if cfg.interleave and warm is not None:
                pairs = [ratio(r.conv_later_ttft(size, rep), warm.conv_later_ttft(size, rep))
                         for rep in range(cfg.reps)]
                rows.append([f"~{size}: {name} / ours (turn-N), paired per conversation",
                             "", "", fmt_ratio(median(pairs), TARGETS["peer_ours"]),
                             f"≥{TARGETS['peer_ours']}×"])
            t1p, t1o = median(r.turn_ttfts(size, 0)), median(warm.turn_ttfts(size, 0)) \
                if warm else None
            rows.append([f"~{size}: {name} / ours (turn 1, both cold)", fmt(t1p), fmt(t1o),
                         fmt_ratio(ratio(t1p, t1o)), "(info)"])
    return md_table(["comparison", "numerator (s)", "ours (s)", "ratio", "target"], rows)


def bytes_table(convs: list[Conversation], per_token: int) -> str:
    rows = []
    for conv in convs:
        theory = per_token * conv.session_tokens if conv.session_tokens else None
        r = ratio(conv.session_bytes, theory)
        ok = None if r is None else abs(r - 1) <= TARGETS["bytes_tolerance"]
        rows.append([conv.key, conv.session_tokens, conv.session_bytes, theory,
                     "—" if r is None else f"{r:.3f} {'✅' if ok else '❌'}"])
    head = (f"Theoretical = tokens x {per_token} B (layers x 2 x kv_heads x head_dim x 4 B, "
            "float32); target within 10%.\n\n")
    return head + md_table(["session", "tokens", "bytes", "theoretical bytes",
                            "bytes / theoretical"], rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~1k only, 3 turns, 1 repetition")
    p.add_argument("--sizes", help="first-turn sizes in tokens (default 1000,4000)")
    p.add_argument("--turns", type=int, help="turns per conversation (default 4; quick 3)")
    p.add_argument("--reps", type=int, help="conversations per size (default 2; quick 1)")
    p.add_argument("--reply-tokens", type=int, default=32, help="max_tokens of every turn")
    p.add_argument("--peers", default="openblas",
                   help="comma list: openblas, plain (plain: every request under --plain-cap), "
                        "llama (llama-server on the GGUF, bench/build_llama_server.sh)")
    p.add_argument("--ours-on-gguf", action="store_true",
                   help="`ours` (and ours-cold) serve the GGUF itself instead of the float32 "
                        "folder: the comparison with llama-server on the same file")
    p.add_argument("--plain-cap", type=float, default=300.0,
                   help="seconds to wait for the plain peer's first token per turn")
    p.add_argument("--no-cold", action="store_true", help="skip the --no-kv-cache server")
    p.add_argument("--gguf", action="store_true",
                   help="also run mlxd on the GGUF (warm, replaying the script)")
    p.add_argument("--interleave", action="store_true",
                   help="keep mlxd, mlxd-cold and the OpenBLAS peer up together (idle while "
                        "not measured) and alternate them conversation by conversation")
    p.add_argument("--out", help="results file name under bench/results/")
    cfg = p.parse_args(argv)
    q = cfg.quick
    cfg.sizes = [int(x) for x in (cfg.sizes or ("1000" if q else "1000,4000")).split(",")]
    cfg.turns = cfg.turns or (3 if q else 4)
    cfg.reps = cfg.reps or (1 if q else 2)
    cfg.out = cfg.out or ("kv-quick.md" if q else "kv.md")
    if cfg.turns - 1 > len(FOLLOW_UPS):
        raise SystemExit(f"at most {len(FOLLOW_UPS) + 1} turns")
    return cfg


async def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    hf = ensure_hf_folder()
    pm = PromptMaker(hf, seed=int(time.time()))
    convs = make_conversations(cfg, pm)
    weights = gguf_path() if cfg.ours_on_gguf else hf
    members: list[tuple[ServerSpec, str]] = [(ours_spec("ours", weights), "warm")]
    if not cfg.no_cold:
        members.append((ours_spec("ours-cold", weights, "--no-kv-cache"), "cold"))
    if cfg.gguf:
        members.append((ours_spec("ours-gguf", gguf_path()), "replay"))
    plain: list[tuple[ServerSpec, str]] = []
    for peer in [x.strip() for x in cfg.peers.split(",") if x.strip()]:
        if peer not in ("openblas", "plain", "llama"):
            raise SystemExit(f"unknown peer {peer!r} (openblas, plain, llama)")
        # llama-server keeps each slot's prompt cache: a replayed turn reuses its prefix
        spec = llama_spec("peer-llama", gguf_path()) if peer == "llama" else \
            peer_spec(f"peer-{peer}", hf, openblas=peer == "openblas")
        (plain if peer == "plain" else members).append((spec, peer))
    groups = [members] if cfg.interleave else [[m] for m in members]
    groups += [[m] for m in plain]  # alone and last: a capped request keeps it busy
    runs = await bench(groups, convs, cfg, pm)
    text = report(cfg, runs, convs, kv_bytes_per_token(hf), ["bench/bench_kv.py", *argv])
    print("\n" + text)
    print(f"written to {write_report(cfg.out, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
