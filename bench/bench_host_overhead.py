"""Host (Python) cost per token under many concurrent streams, on a compute-free model.

    .venv/bin/python bench/bench_host_overhead.py [--streams 1,32,64] [--bursts 4]
        [--profile 32,64] [--base REV [--head REV] [--reps 2]]

The model is bench/out/random-qwen3-tiny (bench/random_model.py: hidden size 64, 2 layers,
a 49k vocabulary, end-of-turn tokens never sampled), so nearly all of a step is the
server's own work: scheduling, sampling glue, detokenizing, events, SSE. That is the cost
a GPU step hides only when it is longer (issue 17). Each N sends bursts of N concurrent
greedy streams of --tokens tokens; the first burst is a warm-up. Figures per N: aggregate
tokens/s (wall), server CPU (utime+stime) per token, p50/p95 time to first token.

--profile N,...: one extra burst at each N under `py-spy record --threads --format raw`
(idle frames off), summarised per thread (the engine thread "mlx-engine" against the
event loop, the main thread): the top functions by own time and by time including
callees; the raw stacks stay in bench/out/ for flame graphs.

--base REV: the same bursts at two revisions (bench_ab.py's worktrees), alternated
base, head, head, base, ... --reps times each; medians and head/base ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench_ab import checkout
from bench_ab import spec as revision_spec
from common import (
    OUT_DIR,
    PYTHON,
    Server,
    chat_body,
    client,
    environment_note,
    load_avg,
    md_table,
    ours_spec,
    running,
    stream_chat,
    write_models_yaml,
    write_report,
)

MODEL_DIR = OUT_DIR / "random-qwen3-tiny"
REQUEST_TIMEOUT_S = 600.0
PY_SPY = Path(PYTHON).with_name("py-spy")
PROFILE_RATE_HZ = 100
# Leaf frames of a thread that waits (py-spy's own idle detection does not see these
# here): left out of a thread's busy samples.
IDLE_LEAVES = ("EpollSelector.select", "Condition.wait", "Event.wait (threading",
               "Queue.get", "Thread.join", "lock.acquire")
TOP_FRAMES = 12
# py-spy's raw lines: "thread (0x7f..): "name";func (file:line);... count" with --threads
_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(slots=True)
class Burst:
    streams: int
    tokens: int
    wall_s: float
    cpu_s: float
    ttfts: list[float]

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def cpu_ms_per_token(self) -> float:
        return 1000 * self.cpu_s / max(self.tokens, 1)


@dataclass(slots=True)
class Figures:
    """Measured bursts by stream count (warm-ups excluded)."""

    bursts: dict[int, list[Burst]] = field(default_factory=lambda: defaultdict(list))

    def row(self, n: int) -> dict[str, float]:
        bs = self.bursts[n]
        ttfts = sorted(t for b in bs for t in b.ttfts)
        return {"tok_s": statistics.median(b.tok_per_s for b in bs),
                "cpu_ms": statistics.median(b.cpu_ms_per_token for b in bs),
                "ttft_p50": 1000 * percentile(ttfts, 0.50),
                "ttft_p95": 1000 * percentile(ttfts, 0.95)}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def messages(burst: str, j: int) -> list[dict[str, str]]:
    # Unique from the first word: no prefix reuse between streams or bursts.
    return [{"role": "user", "content": f"{burst}-{j}: tell me a long story about rivers."}]


async def burst(srv: Server, n: int, tokens: int, tag: str) -> Burst:
    async with client(REQUEST_TIMEOUT_S) as c:
        cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
        results = await asyncio.gather(*(stream_chat(c, srv.base_url, chat_body(
            messages(tag, j), tokens)) for j in range(n)))
        wall, cpu = time.perf_counter() - t0, srv.cpu_seconds() - cpu0
    short = [r.tokens for r in results if r.tokens != tokens]
    if short:
        raise RuntimeError(f"{len(short)} streams of {n} did not run to {tokens} tokens: "
                           f"{short[:5]}")
    return Burst(n, sum(r.tokens for r in results), wall, cpu,
                 [r.ttft for r in results if r.ttft is not None])


def measure(srv: Server, counts: list[int], bursts: int, tokens: int, figures: Figures,
            tag: str) -> None:
    for n in counts:
        for b in range(bursts):
            res = asyncio.run(burst(srv, n, tokens, f"{tag}n{n}b{b}"))
            if b > 0:  # the first burst of each N warms up (compiles, allocator pools)
                figures.bursts[n].append(res)
            print(f"    N={n} burst {b}{' (warm-up)' if b == 0 else ''}: "
                  f"{res.tok_per_s:.0f} tok/s, {res.cpu_ms_per_token:.3f} ms CPU/token, "
                  f"load {load_avg()}", flush=True)


# -- profiling -------------------------------------------------------------------------

def profile_burst(srv: Server, n: int, tokens: int, raw: Path, gil: bool) -> Burst:
    """One burst at N with py-spy recording the server for as long as it runs; `gil`:
    only the thread holding the GIL is sampled."""
    if shutil.which(str(PY_SPY)) is None:
        raise SystemExit(f"py-spy not found at {PY_SPY}")
    spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(srv.process.proc.pid),
                            "--threads", "--format", "raw", "--rate", str(PROFILE_RATE_HZ),
                            "--output", str(raw), *(["--gil"] if gil else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    try:
        return asyncio.run(burst(srv, n, tokens, f"prof{n}"))
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = spy.communicate(timeout=60)
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-800:]}")


def _frame_name(frame: str) -> str:
    m = _FRAME_RE.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("/app/", "/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m['func']} ({file})"


def summarise(raw: Path) -> dict[str, tuple[int, Counter[str], Counter[str]]]:
    """Per thread: busy samples, own-time counts and inclusive counts by function."""
    threads: dict[str, tuple[list[int], Counter[str], Counter[str]]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = stack.split(";")
        # With --threads the first frame names the thread (py-spy also prefixes process).
        head = next((i for i, f in enumerate(frames) if f.startswith("thread ")), None)
        thread = frames[head] if head is not None else "?"
        thread = thread.split(":", 1)[-1].strip().strip('"') if '"' in thread else thread
        funcs = [_frame_name(f) for f in frames[(head or -1) + 1:]]
        if not funcs:
            continue
        count = int(count_s)
        if funcs[-1].startswith(IDLE_LEAVES):
            continue
        total, own, incl = threads.setdefault(thread, ([0], Counter(), Counter()))
        total[0] += count
        own[funcs[-1]] += count
        for name in set(funcs):
            incl[name] += count
    return {t: (v[0][0], v[1], v[2]) for t, v in threads.items()}


def profile_section(n: int, res: Burst, raw: Path, gil: bool) -> list[str]:
    summary = summarise(raw)
    grand = sum(v[0] for v in summary.values())
    held = f", the GIL held {100 * grand / PROFILE_RATE_HZ / res.wall_s:.0f}% of the wall " \
        "time" if gil else ""
    lines = [f"### {n} streams{' (GIL holder only)' if gil else ''}", "",
             f"{res.tokens} tokens in {res.wall_s:.1f} s ({res.tok_per_s:.0f} tok/s under "
             f"the profiler), {res.cpu_ms_per_token:.3f} ms server CPU per token{held}; "
             f"{grand} busy samples at {PROFILE_RATE_HZ} Hz over all threads (waits left "
             "out), "
             f"raw stacks in `{raw.relative_to(OUT_DIR.parent.parent)}`.", ""]
    for thread, (total, own, incl) in sorted(summary.items(), key=lambda kv: -kv[1][0]):
        if total < grand * 0.02:
            continue
        us_per_token = 1e6 * total / PROFILE_RATE_HZ / max(res.tokens, 1)
        lines += [f"**{thread}**: {total} busy samples ({100 * total / grand:.0f}% of all, "
                  f"~{us_per_token:.0f} µs per token)", ""]
        rows = [[name, f"{100 * c / total:.1f}%", f"{100 * incl[name] / total:.1f}%"]
                for name, c in own.most_common(TOP_FRAMES)]
        lines += [md_table(["function (own time)", "own", "incl."], rows), ""]
        rows = [[name, f"{100 * c / total:.1f}%"] for name, c in incl.most_common(60)
                if "(app/" in name or name.startswith(("step", "_decode"))][:TOP_FRAMES]
        lines += [md_table(["mlxd function (incl. callees)", "incl."], rows), ""]
    return lines


# -- report ----------------------------------------------------------------------------

def figures_table(figures: Figures) -> str:
    rows = []
    for n in sorted(figures.bursts):
        r = figures.row(n)
        rows.append([n, f"{r['tok_s']:.0f}", f"{r['cpu_ms']:.3f}", f"{r['ttft_p50']:.0f}",
                     f"{r['ttft_p95']:.0f}", len(figures.bursts[n])])
    return md_table(["streams", "tok/s (wall)", "server CPU ms/token", "TTFT p50 ms",
                     "TTFT p95 ms", "bursts"], rows)


def ab_table(base: str, head: str, figs: dict[str, Figures]) -> str:
    rows = []
    for n in sorted(figs[base].bursts):
        b, h = figs[base].row(n), figs[head].row(n)
        rows.append([n, f"{b['tok_s']:.0f}", f"{h['tok_s']:.0f}",
                     f"{h['tok_s'] / b['tok_s']:.3f}", f"{b['cpu_ms']:.3f}",
                     f"{h['cpu_ms']:.3f}", f"{h['cpu_ms'] / b['cpu_ms']:.3f}",
                     f"{b['ttft_p50']:.0f} / {h['ttft_p50']:.0f}"])
    return md_table(["streams", f"tok/s {base}", f"tok/s {head}", "head/base",
                     f"CPU ms/tok {base}", f"CPU ms/tok {head}", "head/base",
                     "TTFT p50 ms base / head"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=MODEL_DIR, help="HF model folder")
    p.add_argument("--streams", default="1,32,64", help="concurrent streams per burst")
    p.add_argument("--tokens", type=int, default=200, help="max_tokens of every stream")
    p.add_argument("--bursts", type=int, default=4, help="bursts per N (first: warm-up)")
    p.add_argument("--profile", default="", help="stream counts to profile (py-spy)")
    p.add_argument("--base", default=None, help="A/B: git revision to compare against")
    p.add_argument("--head", default="WORKTREE", help="A/B: git revision (default: worktree)")
    p.add_argument("--reps", type=int, default=2, help="A/B: server runs per revision")
    p.add_argument("--max-batch", type=int, default=64,
                   help="the server's --max-batch (64: a GPU's default; a CPU's is 32)")
    p.add_argument("--gil", action="store_true",
                   help="--profile samples only the thread holding the GIL")
    p.add_argument("--mlx-ops", action="store_true",
                   help="MLXD_CPU_FAST_KERNELS=0: MLX's own (asynchronous) decode step, as "
                        "on a GPU, instead of the synchronous numpy one")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    env = {"MLXD_CPU_FAST_KERNELS": "0"} if args.mlx_ops else {}
    server_args = ["--max-batch", str(args.max_batch)]
    if not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model} is missing: bench/random_model.py makes it")
    counts = [int(x) for x in args.streams.split(",") if x]
    profiles = [int(x) for x in args.profile.split(",") if x]
    command = "bench/bench_host_overhead.py " + " ".join(
        f"--{k} {v}" for k, v in (("model", args.model if args.model != MODEL_DIR else None),
                                  ("streams", args.streams), ("tokens", args.tokens),
                                  ("bursts", args.bursts), ("profile", args.profile),
                                  ("max-batch", args.max_batch),
                                  ("base", args.base), ("head", args.head if args.base else None),
                                  ("reps", args.reps if args.base else None)) if v) + \
        (" --mlx-ops" if args.mlx_ops else "") + (" --gil" if args.gil else "")
    lines = ["# Host overhead per token (compute-free model)", "", f"`{command}`", "",
             environment_note(), "",
             f"{args.model.name}, greedy, {args.tokens} tokens per stream, unique prompts; "
             "medians over the measured bursts (the first burst of each N is a warm-up).", ""]
    if args.base is None:
        figures = Figures()
        srv_spec = ours_spec("host-overhead", args.model, *server_args)
        srv_spec.env.update(env)
        with running(srv_spec) as srv:
            measure(srv, counts, args.bursts, args.tokens, figures, "m")
            sections = []
            for n in profiles:
                raw = OUT_DIR / f"py-spy-host-overhead-{n}{'-gil' if args.gil else ''}.txt"
                res = profile_burst(srv, n, args.tokens, raw, args.gil)
                sections += profile_section(n, res, raw, args.gil)
        lines += [figures_table(figures), ""]
        if sections:
            lines += ["## Profile (py-spy, per thread)", "", *sections]
        name = args.out or "host-overhead.md"
    else:
        models = write_models_yaml(OUT_DIR / "models-host-overhead.yaml", "bench-model",
                                   args.model)
        sides = [checkout(args.base), checkout(args.head)]
        figs = {label: Figures() for label, _ in sides}
        for rep in range(args.reps):
            for label, tree in (sides if rep % 2 == 0 else sides[::-1]):
                print(f"  rep {rep} {label}", flush=True)
                srv_spec = revision_spec(label, tree, models)
                srv_spec.argv += server_args
                srv_spec.env.update(env)
                with running(srv_spec) as srv:
                    measure(srv, counts, args.bursts, args.tokens, figs[label], f"r{rep}")
        (base, _), (head, _) = sides
        lines += [f"Revisions alternated base, head, head, base, ... ({args.reps} server runs "
                  f"each, {args.bursts - 1} measured bursts per N per run).", "",
                  ab_table(base, head, figs), "", "Per revision:", ""]
        for label in (base, head):
            lines += [f"**{label}**", "", figures_table(figs[label]), "", "Raw bursts (tok/s, "
                      "CPU ms/token), in the order run:", ""]
            lines += [f"- N={n}: " + ", ".join(f"{b.tok_per_s:.0f}/{b.cpu_ms_per_token:.3f}"
                                               for b in bs)
                      for n, bs in sorted(figs[label].bursts.items())] + [""]
        name = args.out or f"host-overhead-ab-{base}-{head}.md"
    path = write_report(name, "\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwritten to {path}")


if __name__ == "__main__":
    main()
