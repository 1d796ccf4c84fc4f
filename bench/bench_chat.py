"""Chat core benchmark: mlxd against mlx_lm.server and llama-server, one run, ratios.

    .venv/bin/python bench/bench_chat.py [--quick] [--peers openblas,plain,llama] [--no-gguf]

Servers run one after another (never together: 2 cores). For each one:
  (a) single-stream decode tokens/s: 128 greedy tokens from a story prompt, counted after
      the first token (usage.completion_tokens; the model rambles until the limit);
  (b) time to first token on a ~1k-token prompt, unique from its first word each time so no
      prefix cache can help (the chat template's ~24-token header may still be reused);
  (c) aggregate tokens/s of 8 concurrent streams of 64 tokens (wall clock, send to last finish).
The GGUF is converted once to a float32 HF folder (bench/out/) that mlxd and mlx_lm.server
load; mlxd on the GGUF itself is reported too, and llama-server (peer `llama`, built by
bench/build_llama_server.sh) serves that same GGUF. The plain peer's TTFT runs last, under
--plain-ttft-cap.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PromptMaker,
    Server,
    ServerSpec,
    StreamResult,
    chat_body,
    client,
    ensure_hf_folder,
    environment_note,
    fmt,
    fmt_ratio,
    gguf_path,
    llama_f32_gguf,
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

STORY_TOPICS = (
    "a dragon who learns to cook", "a lighthouse keeper on a stormy island",
    "a robot that wants to become a gardener", "two rival bakers in a small town",
    "a detective cat in Victorian London", "a ship lost in the Arctic ice",
    "a girl who can talk to rivers", "an old clockmaker and his last clock",
    "a city built on the back of a whale", "a musician who hears colours",
)
TARGETS = {"decode": 1.0, "ttft": 1.0, "ttft_plain": 10.0, "ttft_llama": 2.0, "agg": 1.5,
           "agg_vs_single": 5.0}
REQUEST_TIMEOUT_S = 900.0


@dataclass(slots=True)
class Figures:
    name: str
    description: str
    blas: str = "?"
    decode: list[float] = field(default_factory=list)
    decode_tokens: list[int] = field(default_factory=list)
    decode_cpu_per_token: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    ttft_prompt_tokens: int | None = None
    ttft_cached_tokens: int | None = None
    ttft_capped: float | None = None
    """The cap in seconds when the TTFT request was cut off (then ttft is a lower bound)."""
    agg: list[float] = field(default_factory=list)
    agg_decode: list[float] = field(default_factory=list)
    """Sum over the streams of each one's tokens/s after its first token."""
    agg_cpu_per_token: list[float] = field(default_factory=list)
    agg_ttft: list[float] = field(default_factory=list)
    agg_tokens: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ttft_value(self) -> float | None:
        return self.ttft_capped if self.ttft_capped is not None else median(self.ttft)


def story(topic: str, nonce: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"({nonce}) Write a very long, detailed story about "
             f"{topic}. Keep going for many paragraphs."}]


async def warm_up(srv: Server, cfg: argparse.Namespace, pm: PromptMaker, heavy: bool) -> None:
    """Load lazies, allocate buffers and hit the batch shapes before anything is timed."""
    async with client(REQUEST_TIMEOUT_S) as c:
        await stream_chat(c, srv.base_url, chat_body(story("a warm-up", "w0"), 16))
        if heavy:  # one prefill of a long-ish prompt and one concurrent burst
            msg = [{"role": "user", "content": pm.text(600, " warm")}]
            await stream_chat(c, srv.base_url, chat_body(msg, 4))
            await asyncio.gather(*(stream_chat(c, srv.base_url, chat_body(
                story(STORY_TOPICS[i % len(STORY_TOPICS)], f"w{i}"), 8))
                for i in range(cfg.concurrency)))


async def measure_decode(srv: Server, cfg: argparse.Namespace, fig: Figures, rep: int) -> None:
    async with client(REQUEST_TIMEOUT_S) as c:
        cpu0 = srv.cpu_seconds()
        r = await stream_chat(c, srv.base_url, chat_body(
            story(STORY_TOPICS[rep % len(STORY_TOPICS)], f"d{rep}"), cfg.decode_tokens))
        cpu = srv.cpu_seconds() - cpu0
    _check(r, fig, "decode")
    if r.decode_rate is not None:
        fig.decode.append(r.decode_rate)
        fig.decode_cpu_per_token.append(cpu / max(r.tokens, 1))
    fig.decode_tokens.append(r.tokens)
    if r.finish_reason != "length":
        fig.notes.append(f"decode rep {rep}: stopped after {r.tokens} tokens ({r.finish_reason})")
    print(f"    decode rep {rep}: {r.tokens} tok, {fmt(r.decode_rate)} tok/s "
          f"(load {load_avg()})", flush=True)


async def measure_ttft(srv: Server, cfg: argparse.Namespace, fig: Figures, pm: PromptMaker,
                       rep: int, cap: float | None) -> None:
    msg = [{"role": "user", "content": pm.text(cfg.ttft_tokens, f" {srv.spec.name}")}]
    async with client(REQUEST_TIMEOUT_S) as c:
        r = await stream_chat(c, srv.base_url, chat_body(msg, 2), timeout=cap)
    if r.timed_out or r.ttft is None:
        fig.ttft_capped = cap
        fig.notes.append(f"TTFT capped: no first token within {cap:.0f}s")
        print(f"    ttft rep {rep}: no first token within {cap}s", flush=True)
        return
    _check(r, fig, "ttft")
    fig.ttft.append(r.ttft)
    fig.ttft_prompt_tokens = r.prompt_tokens
    fig.ttft_cached_tokens = r.cached_tokens
    print(f"    ttft rep {rep}: {r.ttft:.2f}s for {r.prompt_tokens} prompt tokens "
          f"(cached {r.cached_tokens}, {r.headers.get('x-mlxd-cache', '-')}; load {load_avg()})",
          flush=True)


async def measure_concurrent(srv: Server, cfg: argparse.Namespace, fig: Figures,
                             rep: int) -> None:
    n = cfg.concurrency
    async with client(REQUEST_TIMEOUT_S) as c:
        cpu0 = srv.cpu_seconds()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(c, srv.base_url, chat_body(
            story(STORY_TOPICS[i % len(STORY_TOPICS)], f"c{rep}-{i}"), cfg.conc_tokens))
            for i in range(n)))
    for r in results:
        _check(r, fig, "concurrent")
    end = max(r.t_finish or r.t_end or t0 for r in results)
    tokens = sum(r.tokens for r in results)
    fig.agg_cpu_per_token.append((srv.cpu_seconds() - cpu0) / max(tokens, 1))
    fig.agg.append(tokens / (end - t0))
    fig.agg_decode.append(sum(r.decode_rate or 0.0 for r in results))
    fig.agg_tokens.append(tokens)
    fig.agg_ttft.append(median([r.ttft for r in results if r.ttft is not None]) or 0.0)
    print(f"    {n} streams rep {rep}: {tokens} tok in {end - t0:.1f}s = {fig.agg[-1]:.1f} tok/s, "
          f"sum of per-stream decode rates {fig.agg_decode[-1]:.1f} "
          f"(median TTFT {fig.agg_ttft[-1]:.2f}s; load {load_avg()})", flush=True)


def _check(r: StreamResult, fig: Figures, what: str) -> None:
    if r.completion_tokens is None:
        fig.notes.append(f"{what}: no usage chunk; counted {r.chunks} content chunks")


async def bench_group(specs: list[ServerSpec], cfg: argparse.Namespace, pm: PromptMaker,
                      plain: bool) -> list[Figures]:
    """Start the group's servers, then run each phase round-robin over them, so slow
    drifts in background load hit every server alike (a group of one = sequential)."""
    figs = [Figures(s.name, s.description) for s in specs]
    with ExitStack() as stack:
        servers = []
        for spec, fig in zip(specs, figs):
            print(f"== {spec.name}: {spec.description}", flush=True)
            srv = stack.enter_context(running(spec))
            fig.blas = srv.blas()
            await warm_up(srv, cfg, pm, heavy=not plain)
            servers.append(srv)
        pairs = list(zip(servers, figs))
        for rep in range(cfg.reps):
            for srv, fig in pairs:
                await measure_decode(srv, cfg, fig, rep)
        for rep in range(cfg.conc_reps):
            for srv, fig in pairs:
                await measure_concurrent(srv, cfg, fig, rep)
        # Last: a capped request leaves the plain peer prefilling in the background.
        for rep in range(1 if plain else cfg.ttft_reps):
            for srv, fig in pairs:
                if not plain:
                    await measure_ttft(srv, cfg, fig, pm, rep, None)
                elif cfg.plain_ttft_cap > 0:
                    await measure_ttft(srv, cfg, fig, pm, rep, cfg.plain_ttft_cap)
                else:
                    fig.notes.append("TTFT skipped (--plain-ttft-cap 0)")
    return figs


def report(cfg: argparse.Namespace, figs: dict[str, Figures], argv: list[str]) -> str:
    lines = ["# bench_chat: mlxd vs mlx_lm.server and llama-server (same weights, side by side)",
             "",
             f"`{' '.join(argv)}`", "", environment_note(), "",
             f"Model: SmolLM2-135M-Instruct ({gguf_path().name}) converted to a float32 HF "
             "folder; every server except `ours-gguf` loads that folder. Greedy (temperature 0).",
             f"Decode: {cfg.decode_tokens} tokens, median of {cfg.reps}; TTFT: ~{cfg.ttft_tokens}-"
             f"token unique prompt, median of {cfg.ttft_reps}; aggregate: {cfg.concurrency} "
             f"concurrent streams x {cfg.conc_tokens} tokens, wall clock from send to last "
             f"finish, median of {cfg.conc_reps}.",
             "Mode: " + ("interleaved (servers up together, measured one at a time, round-robin"
                         " per repetition)" if cfg.interleave else
                         "sequential (one server up at a time)") + ".", ""]
    rows = []
    for f in figs.values():
        ttft = fmt(f.ttft_value)
        if f.ttft_capped is not None:
            ttft = f"> {f.ttft_capped:.0f} (capped)"
        rows.append([f.name, f.blas, fmt(median(f.decode)),
                     fmt(median(f.decode_cpu_per_token), 3), ttft,
                     f.ttft_prompt_tokens, f.ttft_cached_tokens, fmt(median(f.agg)),
                     fmt(median(f.agg_decode)), fmt(median(f.agg_cpu_per_token), 3),
                     fmt(median(f.agg_ttft)), f.description])
    lines += [md_table(["server", "BLAS", "decode tok/s", "CPU s/tok", "TTFT 1k (s)",
                        "prompt tok", "cached tok", f"{cfg.concurrency}-stream tok/s (wall)",
                        "Σ per-stream decode tok/s", "burst CPU s/tok", "burst median TTFT (s)",
                        "what"], rows), "",
              "`CPU s/tok`: server process CPU time per generated token (user+sys, all threads):"
              " less sensitive than wall time to the other jobs on this shared 2-core machine.",
              "`wall` aggregate: all tokens / (last finish - send), prefill of the 8 prompts "
              "included; `Σ per-stream decode`: the sum of each stream's tokens/s after its "
              "first token (the decode-phase figure comparable with single-stream decode).", ""]
    if "ours" in figs or "ours-gguf" in figs:
        lines += ["## Ratios vs targets", ""] + ratio_rows(cfg, figs)
    notes = [f"- {f.name}: {n}" for f in figs.values() for n in f.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", "Raw values (per repetition):", ""]
    for f in figs.values():
        lines.append(f"- {f.name}: decode {[round(x, 2) for x in f.decode]} "
                     f"(tokens {f.decode_tokens}), TTFT {[round(x, 2) for x in f.ttft]}, "
                     f"aggregate {[round(x, 2) for x in f.agg]} (tokens {f.agg_tokens}), "
                     f"Σ decode {[round(x, 2) for x in f.agg_decode]}")
    return "\n".join(lines) + "\n"


def paired(num: list[float], den: list[float]) -> float | None:
    """Median of num[i] / den[i] over the repetitions both have."""
    return median([ratio(a, b) for a, b in zip(num, den)])


def ratio_rows(cfg: argparse.Namespace, figs: dict[str, Figures]) -> list[str]:
    rows = []
    for our_name in ("ours", "ours-gguf"):
        ours = figs.get(our_name)
        if ours is None:
            continue
        d, t, a = median(ours.decode), ours.ttft_value, median(ours.agg)
        ad = median(ours.agg_decode)
        for peer_name, ttft_target in (("peer-openblas", TARGETS["ttft"]),
                                       ("peer-llama", TARGETS["ttft_llama"]),
                                       ("peer-llama-f32", TARGETS["ttft"]),
                                       ("peer-plain", TARGETS["ttft_plain"])):
            peer = figs.get(peer_name)
            if peer is None:
                continue
            # issue 18 sets only a first-token target against llama-server on F32
            untargeted = peer_name in ("peer-plain", "peer-llama-f32")
            decode_target = None if untargeted else TARGETS["decode"]
            agg_target = None if untargeted else TARGETS["agg"]
            ttft_r = ratio(peer.ttft_value, t)
            ttft_txt = fmt_ratio(ttft_r, ttft_target)
            if peer.ttft_capped is not None and ttft_r is not None:
                ttft_txt = "≥ " + ttft_txt  # the peer's time is a lower bound
            rows.append([f"{our_name} / {peer_name}",
                         fmt_ratio(ratio(d, median(peer.decode)), decode_target),
                         ttft_txt,
                         fmt_ratio(ratio(a, median(peer.agg)), agg_target),
                         fmt_ratio(ratio(ad, median(peer.agg_decode)), agg_target)])
            if cfg.interleave and peer_name != "peer-plain":
                # Repetition i of both ran back to back: the median of per-pair ratios
                # cancels most of the background-load drift.
                rows.append([f"{our_name} / {peer_name}, paired per repetition",
                             fmt_ratio(paired(ours.decode, peer.decode), decode_target),
                             fmt_ratio(paired(peer.ttft, ours.ttft), ttft_target),
                             fmt_ratio(paired(ours.agg, peer.agg), agg_target),
                             fmt_ratio(paired(ours.agg_decode, peer.agg_decode), agg_target)])
        rows.append([f"{our_name} {cfg.concurrency}-stream / {our_name} single-stream", "", "",
                     fmt_ratio(ratio(a, median(ours.decode)), TARGETS["agg_vs_single"]),
                     fmt_ratio(ratio(ad, median(ours.decode)), TARGETS["agg_vs_single"])])
    return [md_table(["comparison", "decode (ours/peer, ≥1.0)",
                      "TTFT (peer/ours; ≥1.0 OpenBLAS, ≥2 llama-server, ≥10 plain)",
                      f"{cfg.concurrency}-stream aggregate, wall (≥1.5 OpenBLAS; ≥5 own single)",
                      "Σ per-stream decode (same targets)"],
                     rows)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="1 repetition each, shorter outputs, plain peer TTFT capped at 60 s")
    p.add_argument("--peers", default="openblas,plain",
                   help="comma list of peers: openblas, plain, llama (empty: ours only)")
    p.add_argument("--interleave", action="store_true",
                   help="keep mlxd and the OpenBLAS peer up together (idle while not measured) "
                        "and alternate them rep by rep; the plain peer still runs alone")
    p.add_argument("--no-gguf", action="store_true", help="skip mlxd on the GGUF itself")
    p.add_argument("--no-hf", action="store_true",
                   help="skip mlxd on the float32 HF folder (ours-gguf against the peers)")
    p.add_argument("--reps", type=int, help="decode repetitions (default 3; quick 1)")
    p.add_argument("--ttft-reps", type=int, help="TTFT repetitions (default 3; quick 1)")
    p.add_argument("--conc-reps", type=int, help="burst repetitions (default 2; quick 1)")
    p.add_argument("--decode-tokens", type=int, help="tokens per decode run (default 128)")
    p.add_argument("--ttft-tokens", type=int, default=1000, help="TTFT prompt size in tokens")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent streams")
    p.add_argument("--conc-tokens", type=int, help="tokens per concurrent stream (default 64)")
    p.add_argument("--plain-ttft-cap", type=float,
                   help="seconds to wait for the plain peer's first token; 0 skips "
                        "(default 300; quick 60)")
    p.add_argument("--ours-args", default="", help="extra mlxd flags, space separated")
    p.add_argument("--peer-args", default="", help="extra mlx_lm.server flags, space separated")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    cfg = p.parse_args(argv)
    q = cfg.quick
    defaults = {"reps": 1 if q else 3, "ttft_reps": 1 if q else 3, "conc_reps": 1 if q else 2,
                "decode_tokens": 64 if q else 128, "conc_tokens": 32 if q else 64,
                "plain_ttft_cap": 60.0 if q else 300.0,
                "out": "chat-quick.md" if q else "chat.md"}
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    return cfg


async def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    hf = ensure_hf_folder()
    pm = PromptMaker(hf, seed=int(time.time()))
    ours_extra = cfg.ours_args.split()
    peer_extra = tuple(cfg.peer_args.split())
    specs: list[tuple[ServerSpec, bool]] = [] if cfg.no_hf else \
        [(ours_spec("ours", hf, *ours_extra), False)]
    if not cfg.no_gguf:
        specs.append((ours_spec("ours-gguf", gguf_path(), *ours_extra), False))
    peers = [x.strip() for x in cfg.peers.split(",") if x.strip()]
    for peer in peers:
        if peer not in ("openblas", "plain", "llama", "llama-f32"):
            raise SystemExit(f"unknown peer {peer!r} (openblas, plain, llama, llama-f32)")
        if peer == "llama":
            specs.append((llama_spec("peer-llama", gguf_path()), False))
            continue
        if peer == "llama-f32":
            specs.append((llama_spec("peer-llama-f32", llama_f32_gguf(gguf_path())), False))
            continue
        specs.append((peer_spec(f"peer-{peer}", hf, openblas=peer == "openblas",
                                extra=peer_extra), peer == "plain"))
    figs: dict[str, Figures] = {}
    fast = [spec for spec, plain in specs if not plain]
    groups = [fast] if cfg.interleave else [[spec] for spec in fast]
    groups += [[spec] for spec, plain in specs if plain]
    for group in groups:
        plain = group[0].name == "peer-plain"
        for fig in await bench_group(group, cfg, pm, plain):
            figs[fig.name] = fig
    text = report(cfg, figs, ["bench/bench_chat.py", *argv])
    print("\n" + text)
    print(f"written to {write_report(cfg.out, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
