"""Decode speed with a json_schema constraint against without, 1 and 8 streams, one server.

    .venv/bin/python bench/bench_structured.py [--reps 3] [--tokens 128] [--model gguf|hf]

The same prompt and token budget both ways; the schema has one free string, so both
decode about as many tokens. Rates are tokens/s after the first token (per stream; the
8-stream figure is their sum), alternating constrained and free repetition by repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from common import (
    chat_body,
    client,
    ensure_hf_folder,
    gguf_path,
    load_avg,
    ours_spec,
    running,
    stream_chat,
    write_report,
)

SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["title", "story"],
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}},
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA}}
REQUEST_TIMEOUT_S = 600.0


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long story number {i} about a lighthouse "
                                        "keeper, as JSON with a title and the story."}]


async def burst(url: str, streams: int, tokens: int, constrained: bool, rep: int) -> float:
    extra = {"response_format": FORMAT} if constrained else {}
    async with client(REQUEST_TIMEOUT_S) as c:
        results = await asyncio.gather(*(stream_chat(c, url, chat_body(
            messages(rep * streams + i), tokens, temperature=0.8, seed=(rep + 1) * 100 + i,
            **extra)) for i in range(streams)))
    return sum(r.decode_rate or 0.0 for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--model", choices=("gguf", "hf"), default="gguf")
    p.add_argument("--out", default="structured.md")
    args = p.parse_args()
    source = gguf_path() if args.model == "gguf" else ensure_hf_folder()
    rates: dict[tuple[int, bool], list[float]] = {(s, c): [] for s in (1, 8)
                                                   for c in (False, True)}
    with running(ours_spec("ours", source)) as srv:
        asyncio.run(burst(srv.base_url, 8, 16, True, -1))  # warm-up: grammar, batch shapes
        for rep in range(args.reps):
            for streams in (1, 8):
                for constrained in ((False, True) if rep % 2 == 0 else (True, False)):
                    rate = asyncio.run(burst(srv.base_url, streams, args.tokens, constrained,
                                             rep))
                    rates[(streams, constrained)].append(rate)
                    print(f"rep {rep}: {streams} stream(s), "
                          f"{'json_schema' if constrained else 'free'}: {rate:.1f} tok/s "
                          f"(load {load_avg()})", flush=True)
    lines = ["# Structured output: decode speed with and without a json_schema constraint", "",
             f"`bench/bench_structured.py --reps {args.reps} --tokens {args.tokens} --model "
             f"{args.model}` · {time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()}",
             "", f"mlxd on {source.name}; temperature 0.8, {args.tokens} tokens a stream; "
             "sum of per-stream decode rates, median of the repetitions.", "",
             "| streams | free tok/s | json_schema tok/s | constrained / free |",
             "|---|---|---|---|"]
    for streams in (1, 8):
        free = statistics.median(rates[(streams, False)])
        constrained = statistics.median(rates[(streams, True)])
        lines.append(f"| {streams} | {free:.1f} | {constrained:.1f} | {constrained / free:.3f} |")
    lines += ["", "Raw: " + "; ".join(
        f"{s} stream(s) {'json_schema' if c else 'free'} {[round(x, 1) for x in v]}"
        for (s, c), v in rates.items())]
    path = write_report(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
