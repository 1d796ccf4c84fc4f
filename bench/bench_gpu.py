"""GPU serving, side by side on the same random-weight models: llama.cpp (its engine and
llama-server), the bare MLX loop, mlxd and mlx_lm.server, one call, ratios.

    python3 bench/bench_gpu.py pack                  # here: what the GPU machine lacks
    python3 bench/bench_gpu.py all [--geometries 0.6b,8b] [--streams 1,8,32,64,128]

`pack` (on a machine with a package index and the offline SmolLM2 package) writes the
trimmed llama.cpp source and SmolLM2's tokenizer under bench/out/ to carry along.
On the GPU machine, `prepare` builds llama.cpp for CUDA (bench/build_llama_server.sh,
LLAMA_CUDA=1) while it writes each geometry's random weights as an HF folder and as the
same bf16 weights in a GGUF (bench/random_model.py); `run` measures; `all` does both.

Every server answers the same streaming OpenAI requests from one client: bursts of N
concurrent greedy streams (`--tokens` each; random weights, so the end-of-turn tokens are
silenced and every stream runs to its limit), each burst size repeated (`--bursts`; the
first burst of a size pays for kernel compilation and is reported apart); the first token
of a cold 1.4k-token prompt and of turn 2 of that conversation; and the first token of a
request sent while 64 streams decode. llama.cpp's own engine (`llama-batched-bench`) and
a bare MLX loop (batched prefill, then greedy steps, one token list read back per step
as a server would) show what each side's kernels can do without a server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyspy  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR,
    OUT_DIR,
    PYTHON,
    PromptMaker,
    Server,
    ServerSpec,
    StreamResult,
    chat_body,
    client,
    environment_note,
    fmt,
    fmt_ratio,
    md_table,
    ours_spec,
    peer_spec,
    ratio,
    running,
    stream_chat,
    write_report,
)
from random_model import (  # noqa: E402
    TOKENIZER_DIR,
    gguf_file,
    model_dir,
    write_gguf,
    write_hf,
)

LLAMA_VERSION = "0.3.36"
CARRY_DIR = OUT_DIR / "gpu-carry"
LLAMA_TARBALL = CARRY_DIR / f"llama-src-{LLAMA_VERSION}.tar.gz"
LLAMA_DIR = OUT_DIR / "llama.cpp" / f"{LLAMA_VERSION}-cuda"
# `--llama-build cpu`: the CPU build bench_chat.py uses, to try this script without a GPU.
LLAMA_CPU_DIR = OUT_DIR / "llama.cpp" / LLAMA_VERSION
# Parts of the sdist the build does not read; left out so the source fits one carry.
LLAMA_UNUSED = ("models", "docs", "tests", "benches", "examples", "media", "pocs", "ci",
                "skills", "requirements", ".github", ".devops")
SERVERS = ("engine", "llama", "bare", "mlxd", "mlx_lm")
LABELS = {"engine": "llama.cpp engine (batched-bench)", "llama": "llama-server",
          "bare": "bare MLX loop", "mlxd": "mlxd", "mlx_lm": "mlx_lm.server"}
# mlx_lm.server serves many streams at a fraction of the others' rate (and crashed at 64
# in the run that filed the issue): larger bursts would take minutes of device time.
MLX_LM_MAX_STREAMS = 32
SLOTS = 128
CONTEXT = 65536
LLAMA_SERVER_ARGS = ("-ngl", "99", "-fa", "on", "-np", str(SLOTS), "-c", str(CONTEXT),
                     "--kv-unified")
PROMPT_TOKENS_BARE = 32
COLD_PROMPT_TOKENS = 1368
LOAD_STREAMS = 64
LATE_PROMPT_TOKENS = 512
TIMEOUT_S = 600.0
PROFILE_DELAY_S = 1.5
PROFILE_S = 4.0


# -- pack (here) and prepare (there) ------------------------------------------------------

def pack() -> None:
    """The trimmed llama.cpp source tarball and SmolLM2's tokenizer, under bench/out/."""
    src = OUT_DIR / "llama.cpp" / LLAMA_VERSION / "src"
    if not (src / "vendor" / "llama.cpp").is_dir():
        subprocess.run([str(BENCH_DIR / "build_llama_server.sh"), LLAMA_VERSION], check=True)
    CARRY_DIR.mkdir(parents=True, exist_ok=True)
    unused = {f"vendor/llama.cpp/{name}" for name in LLAMA_UNUSED}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        rel = info.name.split("/", 1)[1] if "/" in info.name else ""
        return None if any(rel == u or rel.startswith(u + "/") for u in unused) else info

    with tarfile.open(LLAMA_TARBALL, "w:gz") as tar:
        tar.add(src / "vendor" / "llama.cpp", arcname="llama-src/vendor/llama.cpp",
                filter=keep)
    subprocess.run([PYTHON, str(BENCH_DIR / "random_model.py"), "tokenizer", "--gguf-py",
                    str(src / "vendor" / "llama.cpp" / "gguf-py")], check=True)
    print(f"carry: {LLAMA_TARBALL.relative_to(BENCH_DIR.parent)} "
          f"({LLAMA_TARBALL.stat().st_size / 1e6:.0f} MB), "
          f"{TOKENIZER_DIR.relative_to(BENCH_DIR.parent)}", flush=True)


def gguf_py() -> Path:
    return LLAMA_DIR / "src" / "vendor" / "llama.cpp" / "gguf-py"


# `--geometries 8b-q4`: the 8B weights quantized after they are written, for MLX by
# mlx-lm's converter (affine, groups of 32) and for llama.cpp by its llama-quantize (the
# block-32 type of the same width), so both servers read 4 (or 8) bits a weight.
QUANTS = {"q4": (4, "Q4_0"), "q8": (8, "Q8_0")}


def split_geometry(geometry: str) -> tuple[str, str | None]:
    base, _, quant = geometry.partition("-")
    if quant and quant not in QUANTS:
        raise SystemExit(f"unknown quantization {quant!r} (have {', '.join(QUANTS)})")
    return base, quant or None


def gguf_for(geometry: str) -> Path:
    base, quant = split_geometry(geometry)
    if quant is None:
        return gguf_file(base)
    return OUT_DIR / f"random-qwen3-{base}.{QUANTS[quant][1].lower()}.gguf"


def quantize_mlx(geometry: str) -> None:
    base, quant = split_geometry(geometry)
    assert quant is not None
    shutil.rmtree(model_dir(geometry), ignore_errors=True)
    subprocess.run([PYTHON, "-m", "mlx_lm", "convert", "--hf-path", str(model_dir(base)),
                    "--mlx-path", str(model_dir(geometry)), "-q", "--q-bits",
                    str(QUANTS[quant][0]), "--q-group-size", "32"], check=True)


def quantize_gguf(geometry: str, quantizer: Path) -> None:
    base, quant = split_geometry(geometry)
    assert quant is not None
    subprocess.run([str(quantizer), str(gguf_file(base)), str(gguf_for(geometry)),
                    QUANTS[quant][1]], check=True, capture_output=True)


def prepare(geometries: list[str]) -> None:
    """Build llama.cpp (CPU cores) while the models are written (GPU, disk); quantized
    geometries are made from their base's files (the GGUF once llama.cpp is built)."""
    LLAMA_DIR.mkdir(parents=True, exist_ok=True)
    log = (OUT_DIR / "llama-build.log").open("w")
    env = {**os.environ, "LLAMA_CUDA": "1", "LLAMA_SRC": str(LLAMA_TARBALL)}
    build = subprocess.Popen([str(BENCH_DIR / "build_llama_server.sh"), LLAMA_VERSION],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not (LLAMA_DIR / "build").is_dir():  # the source is unpacked before cmake runs
        if build.poll() is not None:
            raise SystemExit(f"llama.cpp build failed: see {log.name}")
        time.sleep(0.5)
    for g in geometries:
        base, quant = split_geometry(g)
        if not (model_dir(base) / "config.json").exists() or not gguf_file(base).exists():
            write_hf(base)
            write_gguf(base, gguf_py())
        if quant:
            quantize_mlx(g)
        print(f"  {g}: models written after {time.monotonic() - t0:.0f} s", flush=True)
    if build.wait() != 0:
        raise SystemExit(f"llama.cpp build failed: see {log.name}")
    print(f"  llama.cpp built after {time.monotonic() - t0:.0f} s", flush=True)
    for g in geometries:
        if split_geometry(g)[1]:
            quantize_gguf(g, LLAMA_DIR / "build" / "bin" / "llama-quantize")
            print(f"  {g}: GGUF quantized after {time.monotonic() - t0:.0f} s", flush=True)


# -- figures -------------------------------------------------------------------------------

@dataclass(slots=True)
class Burst:
    streams: int
    rep: int
    tok_s: float
    """Completion tokens of all streams over the burst's wall time (send to last finish)."""
    ttfts: list[float] = field(default_factory=list)
    short: int = 0
    """Streams that ended before max_tokens or failed."""


@dataclass(slots=True)
class Figures:
    server: str
    bursts: list[Burst] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    turn2: list[float] = field(default_factory=list)
    turn2_cached: list[int | None] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    """First token of a request sent while LOAD_STREAMS streams decode."""
    notes: list[str] = field(default_factory=list)
    profiles: dict[int, str] = field(default_factory=dict)
    """py-spy summaries of a burst of N streams (mlxd, --profile)."""

    def timed(self, streams: int) -> list[Burst]:
        """The bursts of this size after the first (the first one, if it is the only one):
        the first pays for kernel compilation."""
        mine = [b for b in self.bursts if b.streams == streams]
        return mine[1:] or mine

    def rates(self, streams: int) -> list[float]:
        return [b.tok_s for b in self.timed(streams)]

    def first_rate(self, streams: int) -> float | None:
        mine = [b for b in self.bursts if b.streams == streams]
        return mine[0].tok_s if len(mine) > 1 else None

    def ttfts(self, streams: int) -> list[float]:
        return [t for b in self.timed(streams) for t in b.ttfts]

    def ttft_max(self, streams: int) -> float | None:
        return max(self.ttfts(streams), default=None)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    vals = sorted(values)
    return vals[min(len(vals) - 1, int(q * len(vals)))]


def span(values: list[float], digits: int = 0) -> str:
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return fmt(lo, digits) if lo == hi else f"{fmt(lo, digits)}–{fmt(hi, digits)}"


# -- HTTP measurements ------------------------------------------------------------------------

def stream_prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"({i}) Write a long story about the number {i}."}]


async def burst(srv: Server, n: int, tokens: int, rep: int, extra: dict[str, Any]) -> Burst:
    async with client(TIMEOUT_S, connections=n + 8) as c:
        t0 = time.perf_counter()
        results: list[StreamResult | BaseException] = await asyncio.gather(
            *(stream_chat(c, srv.base_url, chat_body(stream_prompt(rep * 1000 + i), tokens,
                                                      **extra), TIMEOUT_S)
              for i in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
    ok = [r for r in results if isinstance(r, StreamResult)]
    total = sum(r.tokens for r in ok)
    short = len(results) - len(ok) + sum(1 for r in ok if r.tokens < tokens or r.timed_out)
    return Burst(n, rep, total / wall, [r.ttft for r in ok if r.ttft is not None], short)


async def cold_and_turn2(srv: Server, pm: PromptMaker, fig: Figures, ours: bool) -> None:
    async with client(TIMEOUT_S) as c:
        for rep in range(2):
            first = [{"role": "user", "content": pm.text(COLD_PROMPT_TOKENS, f" cold{rep}")}]
            extra = {"prompt_cache_key": f"conv-{rep}"} if ours else {}
            r1 = await stream_chat(c, srv.base_url, chat_body(first, 16, **extra), TIMEOUT_S)
            if r1.ttft is not None:
                fig.cold.append(r1.ttft)
            second = [*first, {"role": "assistant", "content": r1.text},
                      {"role": "user", "content": "Now tell it again, shorter."}]
            r2 = await stream_chat(c, srv.base_url, chat_body(second, 16, **extra), TIMEOUT_S)
            if r2.ttft is not None:
                fig.turn2.append(r2.ttft)
                fig.turn2_cached.append(r2.cached_tokens)


async def late_arrival(srv: Server, pm: PromptMaker, tokens: int, fig: Figures,
                       extra: dict[str, Any]) -> None:
    """One new request once LOAD_STREAMS streams are all decoding: its first token."""
    started = 0
    all_started = asyncio.Event()

    def on_first() -> None:
        nonlocal started
        started += 1
        if started == LOAD_STREAMS:
            all_started.set()

    async with client(TIMEOUT_S, connections=LOAD_STREAMS + 8) as c:
        load = [asyncio.create_task(stream_chat(
            c, srv.base_url, chat_body(stream_prompt(90_000 + i), tokens * 2, **extra),
            TIMEOUT_S, on_first=on_first)) for i in range(LOAD_STREAMS)]
        try:
            await asyncio.wait_for(all_started.wait(), 120)
        except TimeoutError:
            fig.notes.append(f"late arrival: only {started} of {LOAD_STREAMS} load streams "
                             "had started after 120 s")
        await asyncio.sleep(0.5)  # well inside their decode
        busy = sum(not t.done() for t in load)
        msg = [{"role": "user", "content": pm.text(LATE_PROMPT_TOKENS, " late")}]
        r = await stream_chat(c, srv.base_url, chat_body(msg, 8, **extra), TIMEOUT_S)
        await asyncio.gather(*load, return_exceptions=True)
    if r.ttft is not None:
        fig.late.append(r.ttft)
    if busy < LOAD_STREAMS:
        fig.notes.append(f"late arrival: only {busy} of {LOAD_STREAMS} load streams were "
                         "still running when it was sent")


async def profiled(srv: Server, n: int, cfg: argparse.Namespace, fig: Figures,
                   name: str) -> None:
    """py-spy over the decode of one burst of n streams (twice --tokens: past the prefill)."""
    path = OUT_DIR / "profiles" / f"{name}-{n}.txt"
    task = asyncio.create_task(burst(srv, n, cfg.tokens * 2, 99, {}))
    await asyncio.sleep(PROFILE_DELAY_S)
    await asyncio.to_thread(pyspy.record, srv.process.proc.pid, PROFILE_S, path)
    b = await task
    fig.profiles[n] = summary_with_rate(path, b)


def summary_with_rate(path: Path, b: Burst) -> str:
    return f"{b.streams} streams, {b.tok_s:.0f} tok/s while sampled\n\n" + \
        pyspy.summary(path, PROFILE_S)


async def http_server(srv: Server, key: str, cfg: argparse.Namespace, pm: PromptMaker,
                      streams: list[int], name: str) -> Figures:
    fig = Figures(key)
    extra: dict[str, Any] = {}
    for rep in range(cfg.bursts):
        for n in streams:
            b = await burst(srv, n, cfg.tokens, rep, extra)
            fig.bursts.append(b)
            print(f"    {key} {n:>3} streams rep {rep}: {b.tok_s:8.1f} tok/s, ttft p50 "
                  f"{fmt(percentile(b.ttfts, 0.5))} max {fmt(max(b.ttfts, default=None))} s"
                  + (f", {b.short} short" if b.short else ""), flush=True)
            if b.short:
                fig.notes.append(f"{n} streams rep {rep}: {b.short} streams short of "
                                 f"{cfg.tokens} tokens or failed")
    await cold_and_turn2(srv, pm, fig, key == "mlxd")
    print(f"    {key} cold {span(fig.cold, 2)} s, turn 2 {span(fig.turn2, 2)} s "
          f"(cached {fig.turn2_cached})", flush=True)
    if LOAD_STREAMS in streams:
        await late_arrival(srv, pm, cfg.tokens, fig, extra)
        print(f"    {key} late arrival under {LOAD_STREAMS} streams: {span(fig.late, 2)} s",
              flush=True)
    if key == "mlxd" and cfg.profile:
        if pyspy.available():
            for n in cfg.profile:
                await profiled(srv, n, cfg, fig, name)
        else:
            fig.notes.append("--profile: py-spy is not installed")
    return fig


# -- the servers ------------------------------------------------------------------------------

def llama_bin(cfg: argparse.Namespace, name: str) -> Path:
    return (LLAMA_CPU_DIR if cfg.llama_build == "cpu" else LLAMA_DIR) / "build" / "bin" / name


@contextmanager
def server_for(cfg: argparse.Namespace, key: str, geometry: str) -> Iterator[Server]:
    hf = model_dir(geometry)
    if key == "llama":
        spec = ServerSpec(f"llama-server-{geometry}", [str(llama_bin(cfg, "llama-server")), "-m",
                                           str(gguf_for(geometry)), *LLAMA_SERVER_ARGS],
                          f"llama-server {' '.join(LLAMA_SERVER_ARGS)}")
    elif key == "mlxd":
        spec = ours_spec(f"mlxd-{geometry}", hf, *shlex.split(cfg.mlxd_args))
        if cfg.mlxd_switch_interval:
            spec.argv[1:3] = [str(BENCH_DIR / "mlxd_switch_interval.py"),
                              str(cfg.mlxd_switch_interval)]
    else:
        spec = peer_spec(f"mlx_lm-{geometry}", hf, openblas=False)
    with running(spec) as srv:
        yield srv


def engine(cfg: argparse.Namespace, geometry: str, streams: list[int]) -> Figures:
    """llama-batched-bench: the engine alone, generation rate at each batch size."""
    fig = Figures("engine")
    argv = [str(llama_bin(cfg, "llama-batched-bench")), "-m", str(gguf_for(geometry)),
            "-ngl", "99", "-fa", "on", "-c", str(CONTEXT), "-npp", str(PROMPT_TOKENS_BARE),
            "-ntg", str(cfg.tokens), "-npl", ",".join(map(str, streams)),
            "--output-format", "jsonl"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    (OUT_DIR / "logs").mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "logs" / f"engine-{geometry}.log").write_text(out.stdout + out.stderr)
    for line in (out.stdout + "\n" + out.stderr).splitlines():
        if line.startswith("{") and "speed_tg" in line:
            row = json.loads(line)
            fig.bursts.append(Burst(int(row["pl"]), 0, float(row["speed_tg"])))
    if not fig.bursts:
        fig.notes.append(f"batched-bench gave no figures (exit {out.returncode})")
    return fig


def bare(geometry: str, streams: list[int], tokens: int, bursts: int) -> Figures:
    """The bare MLX loop, in its own process (its memory goes when it ends)."""
    fig = Figures("bare")
    out = subprocess.run([PYTHON, __file__, "bare-loop", "--geometries", geometry,
                          "--streams", ",".join(map(str, streams)), "--tokens", str(tokens),
                          "--bursts", str(bursts)], capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            fig.bursts.append(Burst(row["streams"], row["rep"], row["tok_s"]))
            print(f"    bare {row['streams']:>3} streams rep {row['rep']}: "
                  f"{row['tok_s']:8.1f} tok/s", flush=True)
    if out.returncode != 0:
        fig.notes.append(f"bare loop exit {out.returncode}: {out.stderr[-400:]}")
    return fig


def bare_loop(geometry: str, streams: list[int], tokens: int, bursts: int) -> None:
    """micro_gpu_step's bare loop (mlx-lm's KVCache, step t+1 queued before step t's
    tokens are read back) on the mlx-lm-loaded model, one JSON line per burst."""
    import mlx.core as mx
    from micro_gpu_step import bare
    from mlx_lm import load

    model = load(str(model_dir(geometry)))[0]
    for rep in range(bursts):
        for b in streams:
            rate = bare(model, b, tokens, "bare")
            print(json.dumps({"streams": b, "rep": rep, "tok_s": rate}), flush=True)
            mx.clear_cache()


# -- report -----------------------------------------------------------------------------------

def report(geometry: str, figs: dict[str, Figures], cfg: argparse.Namespace,
           streams: list[int]) -> str:
    keys = [k for k in SERVERS if k in figs]
    head = ["figure", *(LABELS[k] for k in keys), "mlxd / llama-server", "mlxd / bare"]
    rows: list[list[Any]] = []

    def best(key: str, n: int) -> float | None:
        r = figs[key].rates(n) if key in figs else []
        return max(r) if r else None

    for n in streams:
        row: list[Any] = [f"{n} stream{'s' if n > 1 else ''}, tok/s"]
        row += [span(figs[k].rates(n)) for k in keys]
        row += [fmt_ratio(ratio(best("mlxd", n), best("llama", n)), 1.0),
                fmt_ratio(ratio(best("mlxd", n), best("bare", n)))]
        rows.append(row)

    def ttft_row(label: str, get: Any) -> None:
        vals = {k: get(figs[k]) for k in keys}
        mine, peer = vals.get("mlxd"), vals.get("llama")
        rows.append([label, *(span(v, 2) if isinstance(v, list) else fmt(v) for v in
                              vals.values()),
                     fmt_ratio(ratio(min(peer), min(mine)) if mine and peer and
                               isinstance(mine, list) else None, 1.0), ""])

    ttft_row(f"first token, cold {COLD_PROMPT_TOKENS}-token prompt, s", lambda f: f.cold)
    ttft_row("first token, turn 2 of it, s", lambda f: f.turn2)
    ttft_row(f"first token of a request sent while {LOAD_STREAMS} decode, s",
             lambda f: f.late)
    ttft_row(f"slowest first token in a {LOAD_STREAMS}-stream burst, s",
             lambda f: [f.ttft_max(LOAD_STREAMS)] if f.ttft_max(LOAD_STREAMS) else [])
    table = md_table(head, rows)
    first = md_table(["first burst of a size, tok/s", *(LABELS[k] for k in keys)],
                     [[n, *(fmt(figs[k].first_rate(n), 0) for k in keys)] for n in streams])
    p = md_table(["TTFT in bursts (after the first), s", *(LABELS[k] for k in keys)],
                 [[f"{n} streams p50 / p95", *(_p50_p95(figs[k], n) for k in keys)]
                  for n in streams])
    notes = "\n".join(f"- {k}: {note}" for k in keys for note in figs[k].notes)
    profiles = "".join(f"### py-spy of mlxd, {text}\n\n" for fig in figs.values()
                       for text in fig.profiles.values())
    quant = split_geometry(geometry)[1]
    weights = f"{QUANTS[quant][0]}-bit (MLX affine / llama.cpp {QUANTS[quant][1]})" \
        if quant else "bf16"
    return (f"## {geometry} (random Qwen3 geometry, {weights}, 49k vocabulary)\n\n{table}\n\n"
            f"Ratios: throughput mlxd over the peer; first token the peer's time over "
            f"mlxd's (> 1: mlxd sooner). Ranges are over the bursts after the first of each "
            f"size ({cfg.bursts - 1 if cfg.bursts > 1 else 1} each).\n\n{p}\n\n{first}\n\n"
            + (f"Notes:\n{notes}\n\n" if notes else "") + profiles)


def _p50_p95(fig: Figures, n: int) -> str:
    vals = fig.ttfts(n)
    if not vals:
        return "—"
    return f"{fmt(percentile(vals, 0.5))} / {fmt(percentile(vals, 0.95))}"


def run(cfg: argparse.Namespace) -> str:
    text = (f"# GPU serving side by side\n\n`python3 bench/bench_gpu.py {' '.join(sys.argv[1:])}`"
            f"\n\n{environment_note()} · {gpu_name()} · MLX env {mlx_env() or 'defaults'}"
            f"\n\nEach server alone on the GPU, one "
            f"after another; {cfg.tokens} greedy tokens a stream; llama-server "
            f"`{' '.join(LLAMA_SERVER_ARGS)}`; mlxd "
            + (f"with `{cfg.mlxd_args}`" if cfg.mlxd_args else "as started by default")
            + (f", GIL switch interval {cfg.mlxd_switch_interval} s"
               if cfg.mlxd_switch_interval else "")
            + f" and mlx_lm.server as started by default; mlx_lm.server up to "
            f"{MLX_LM_MAX_STREAMS} streams.\n\n")
    for g in cfg.geometries:
        print(f"{g}:", flush=True)
        figs: dict[str, Figures] = {}
        pm = PromptMaker(model_dir(g))
        for key in cfg.servers:
            t0 = time.monotonic()
            streams = [n for n in cfg.streams if key != "mlx_lm" or n <= MLX_LM_MAX_STREAMS]
            try:
                if key == "engine":
                    figs[key] = engine(cfg, g, streams)
                elif key == "bare":
                    figs[key] = bare(g, streams, cfg.tokens, cfg.bursts)
                else:
                    with server_for(cfg, key, g) as srv:
                        figs[key] = asyncio.run(
                            http_server(srv, key, cfg, pm, streams, f"{key}-{g}"))
            except Exception as exc:  # one server failing must not lose the others' figures
                figs[key] = Figures(key, notes=[f"failed: {exc!r}"[:500]])
            print(f"  {key} done in {time.monotonic() - t0:.0f} s", flush=True)
        text += report(g, figs, cfg, cfg.streams)
        _save(cfg, text)
    return text


def _save(cfg: argparse.Namespace, text: str) -> None:
    path = write_report(cfg.report, text)
    dest = os.environ.get("OUT")  # the GPU machine's folder that comes back
    if dest:
        shutil.copy(path, Path(dest) / path.name)


def mlx_env() -> str:
    """The MLX_* variables every MLX process here inherits (MLX reads them at first use)."""
    return " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MLX_"))


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              check=False).stdout.strip() or "no GPU"
    except OSError:
        return "no GPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("pack", "prepare", "run", "all", "bare-loop"))
    parser.add_argument("--geometries", default="0.6b,8b")
    parser.add_argument("--streams", default="1,8,32,64,128")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--report", default="gpu-serving.md")
    parser.add_argument("--llama-build", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--mlxd-args", default="",
                        help="extra mlxd arguments, e.g. '--max-batch 128'")
    parser.add_argument("--mlxd-switch-interval", type=float, default=None,
                        help="run mlxd with this GIL switch interval (s; Python's: 0.005)")
    parser.add_argument("--profile", default="",
                        help="stream counts of extra mlxd bursts under py-spy, e.g. 1,32,64")
    cfg = parser.parse_args(argv)
    cfg.geometries = cfg.geometries.split(",")
    cfg.streams = [int(s) for s in cfg.streams.split(",")]
    cfg.servers = [s for s in cfg.servers.split(",") if s]
    cfg.profile = [int(s) for s in cfg.profile.split(",") if s]
    if unknown := set(cfg.servers) - set(SERVERS):
        parser.error(f"unknown servers {sorted(unknown)}")
    if cfg.stage == "pack":
        pack()
    elif cfg.stage == "bare-loop":
        bare_loop(cfg.geometries[0], cfg.streams, cfg.tokens, cfg.bursts)
    else:
        if cfg.stage in ("prepare", "all"):
            prepare(cfg.geometries)
        if cfg.stage in ("run", "all"):
            run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
