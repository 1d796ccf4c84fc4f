"""mlxd at two git revisions, alternated: did a change move chat speed?

    .venv/bin/python bench/bench_ab.py --base REV [--head REV] [--reps 4]

Each revision is checked out once into bench/out/ab-<sha> (a git worktree) and served on
the bench's float32 SmolLM2 folder, one server at a time, in the order base, head, head,
base, base, ... so a drift in the machine's background load hits both alike. Each turn
measures two single-stream decodes (96 tokens) and one 8-stream burst (48 tokens each).
Reports medians and head/base ratios; on this shared 2-core box single runs swing by
20-30%, which is what the alternation and the medians are for.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from pathlib import Path

from bench_chat import STORY_TOPICS, story
from common import (
    OUT_DIR,
    PYTHON,
    REPO_ROOT,
    Server,
    ServerSpec,
    chat_body,
    client,
    ensure_hf_folder,
    load_avg,
    running,
    stream_chat,
    write_models_yaml,
    write_report,
)

DECODE_TOKENS = 96
BURST_STREAMS = 8
BURST_TOKENS = 48
REQUEST_TIMEOUT_S = 300.0


def checkout(rev: str) -> tuple[str, Path]:
    """(label, folder) of a revision; WORKTREE is this checkout as it is."""
    if rev == "WORKTREE":
        return "worktree", REPO_ROOT
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = OUT_DIR / f"ab-{sha}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), sha],
                       cwd=REPO_ROOT, check=True, capture_output=True)
    return sha, tree


def spec(label: str, tree: Path, models: Path) -> ServerSpec:
    # The revision's own `app` package first on the path, whatever the venv points at.
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from app.__main__ import main; main()"
    argv = [PYTHON, "-c", code, "--models", str(models), "--default-model", "bench-model",
            "--log-level", "warning"]
    return ServerSpec(label, argv, f"mlxd at {label}", ours=True)


async def turn(srv: Server, rep: int, out: dict[str, list[float]]) -> None:
    async with client(REQUEST_TIMEOUT_S) as c:
        await stream_chat(c, srv.base_url, chat_body(story("a warm-up", f"w{rep}"), 16))
        for i in range(2):
            cpu0 = srv.cpu_seconds()
            r = await stream_chat(c, srv.base_url, chat_body(
                story(STORY_TOPICS[i], f"d{rep}-{i}"), DECODE_TOKENS))
            if r.decode_rate is not None:
                out["decode"].append(r.decode_rate)
                out["cpu_per_token"].append((srv.cpu_seconds() - cpu0) / max(r.tokens, 1))
        t0 = time.perf_counter()
        burst = await asyncio.gather(*(stream_chat(c, srv.base_url, chat_body(
            story(STORY_TOPICS[j % len(STORY_TOPICS)], f"b{rep}-{j}"), BURST_TOKENS))
            for j in range(BURST_STREAMS)))
        out["burst"].append(sum(r.tokens for r in burst) / (time.perf_counter() - t0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--head", default="WORKTREE", help="git revision (default: the worktree)")
    p.add_argument("--reps", type=int, default=4, help="turns per revision")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    models = write_models_yaml(OUT_DIR / "models-ab.yaml", "bench-model", ensure_hf_folder())
    sides = [checkout(args.base), checkout(args.head)]
    results = {label: {"decode": [], "cpu_per_token": [], "burst": []} for label, _ in sides}
    for rep in range(args.reps):
        for label, tree in (sides if rep % 2 == 0 else sides[::-1]):
            with running(spec(label, tree, models)) as srv:
                asyncio.run(turn(srv, rep, results[label]))
            print(f"  rep {rep} {label}: " + ", ".join(
                f"{k} {v[-1]:.3g}" for k, v in results[label].items() if v) +
                f" (load {load_avg()})", flush=True)
    (base, _), (head, _) = sides
    med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in results.items()}
    lines = [f"# A/B: mlxd {head} against {base}", "",
             f"`bench/bench_ab.py --base {args.base} --head {args.head} --reps {args.reps}` · "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')} · load avg {load_avg()}", "",
             f"SmolLM2-135M float32 folder, greedy; per turn 2 single-stream decodes of "
             f"{DECODE_TOKENS} tokens and one burst of {BURST_STREAMS} x {BURST_TOKENS} tokens; "
             f"turns alternate base/head. Medians; raw values below.", "",
             "| figure | " + base + " | " + head + " | head / base |", "|---|---|---|---|"]
    for key, name, higher in (("decode", "single-stream decode tok/s", True),
                              ("cpu_per_token", "server CPU s per token", False),
                              ("burst", "8-stream tok/s (wall)", True)):
        ratio = med[head][key] / med[base][key]
        lines.append(f"| {name} | {med[base][key]:.4g} | {med[head][key]:.4g} | "
                     f"{ratio:.3f}{'' if higher else ' (lower is better)'} |")
    lines += ["", "Raw values:", ""]
    for label, r in results.items():
        lines += [f"- {label}: " + "; ".join(f"{k} {[round(x, 4) for x in v]}"
                                             for k, v in r.items())]
    path = write_report(args.out or f"ab-{base}-{head}.md", "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
