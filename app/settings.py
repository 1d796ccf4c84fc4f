"""Server settings: environment variables (MLXD_*) and CLI flags override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# A list setting from the environment is comma-separated ("a,b"), not JSON.
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLXD_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface to bind. Loopback by default: this is a local server."""
    port: int = 8000
    """TCP port to listen on."""
    models: Path = REPO_ROOT / "models.yaml"
    """Path of the models.yaml that declares the served models (optional with `model`)."""
    model: list[str] = []
    """Chat models to serve besides models.yaml's (`mlxd --model`, repeatable): a GGUF file,
    a Hugging Face folder or a Hub repo id; the first is the default chat model."""
    default_model: str | None = None
    """Chat model loaded at start-up and used when a request names none; None = first chat model."""
    default_transcription_model: str | None = None
    """Transcription model used by default; None = first transcription model."""
    eager_load: bool = True
    """Load the default chat model at start-up (/health is 503 until it is ready)."""
    max_batch: int | None = None
    """Most sequences decoding together in one step, per model; None = from memory: as
    many sequences of a typical length as the KV budget holds (app/kv/sizing.py's
    `batch_from_memory`), at most 128 on a GPU and 32 on a CPU, whose steps are
    compute-bound long before."""
    prefill_chunk: int | None = None
    """Most prompt tokens per prefill step (the step's time bounds it too); None = 512 on a
    CPU, 4096 on a GPU, where a burst of many short prompts then prefills in a few steps
    (bench/results/gpu-batch-from-memory.md)."""
    prefill_busy_seconds: float = 0.25
    """Target seconds per prefill chunk while other streams decode (keeps them flowing)."""
    prefill_idle_seconds: float = 1.0
    """Target seconds per prefill chunk when nothing else runs: a new request or a
    disconnect waits at most about this long (prefill_chunk tokens at most)."""
    keepalive_seconds: float = 5.0
    """Seconds between SSE comment keepalives while a stream waits (long prefill)."""
    default_max_tokens: int | None = None
    """max_tokens when a request and models.yaml give none; None = the rest of the context."""
    cpu_fast_kernels: bool = True
    """On an x86 CPU, compute with app/accel/cpu/ where it is faster: polynomial-exp attention
    and SwiGLU in mlx-lm, numpy decode steps for Llama-family chat models, numpy GELU/softmax,
    logits and decode steps for Whisper (chosen per model at load, app/accel/choose.py);
    False = MLX's and mlx-lm's own ops throughout, every model."""
    gpu_fast_kernels: bool = True
    """On an NVIDIA GPU, compute with app/accel/gpu/ where it is faster: the attention of
    batched decode steps in one kernel of ours, not MLX's masked fallback, and of short
    prefills in plain MLX ops, not a cuDNN graph built per shape (app/accel/choose.py);
    False = MLX's and mlx-lm's own ops."""
    gpu_rows_matmul: bool = False
    """With gpu_fast_kernels on an NVIDIA GPU: linear layers multiply 2-8 rows (decode steps
    of 2-8 streams) by small weights through app/accel/gpu/gemv.py's kernel. Off: a decode
    step measured level with MLX's matmul (bench/results/gpu-rows-matmul.md)."""
    cpu_quantized_weights: bool = True
    """With cpu_fast_kernels on an x86 CPU: a GGUF's Q4_0/Q4_1/Q8_0 weights stay quantized
    (decode steps read the packed bytes through app/accel/cpu/quantized.py, prefill
    dequantizes one layer at a time); False = widened to float32 at load (faster prefill,
    ~5x the memory, slower decode)."""
    cpu_int8_activations: bool = False
    """With packed weights on a CPU with AVX-512 VNNI or AVX2: decode steps round
    activations to int8 per block of 32, as llama.cpp does: fewer instructions a weight
    (faster on some CPUs, not on all: measure), but each matmul moves by ~0.5%, and
    SmolLM2-135M's greedy replies then part from the float path's within a few tokens on
    3 of 4 fixed prompts. Off: float activations over the dequantized weights, the same
    greedy tokens as the model widened to float32."""
    kv_cache: bool = True
    """Keep KV caches resident between requests (prefix reuse, sessions); False = always cold."""
    kv_budget_bytes: int | None = None
    """Byte budget over all resident KV caches; None = derived from available memory."""
    kv_dir: Path | None = None
    """Directory for spilled/persisted session caches; None = no persistence."""
    responses_dir: Path | None = None
    """Directory of stored responses (store=true); None = kv_dir/responses (or memory only
    without kv_dir). Replicas behind one proxy can share it, each keeping its own kv_dir:
    a conversation whose replica stopped continues on another."""
    max_audio_bytes: int = 25 * 1024 * 1024
    """Largest accepted audio upload in bytes (413 above it)."""
    max_audio_seconds: float = 2 * 3600
    """Longest accepted audio in seconds, declared or decoded (400 above it). Bounds memory:
    decoding 2 h peaks at ~1.7 GB, and the job keeps its 230 MB spectrogram."""
    max_transcribe_window_seconds: float | None = 30.0
    """Engine seconds one 30 s window may take, temperature retries included (30: never
    slower than real time); past it the window keeps its best text so far. None = no limit."""
    model_idle_ttl_seconds: float | None = None
    """Unload a non-default model after this many idle seconds; None = keep loaded."""
    tensor_parallel: int = 1
    """Ranks the default chat model is sharded over (`mlxd --tensor-parallel N` starts
    them on this host; `mlx.launch` may start them instead). Rank 0 serves HTTP."""
    tp_backend: str = "auto"
    """Collectives of tensor parallelism: ring (TCP, CPUs), nccl (NVIDIA) or auto."""
    log_level: str = "info"
    """Python logging level name."""
    hf_offline: bool = Field(default=False)
    """Never reach the Hugging Face Hub; only models already in the local cache load."""

    # -- access and limits (app/api/security.py, app/server/) ------------------------
    api_keys: CommaList = []
    """Accepted API keys (`Authorization: Bearer <key>` on /v1 and /metrics); each key is a
    tenant with caches of its own. Empty = no authentication (fine on loopback only)."""
    cors_origins: CommaList = []
    """Origins a browser page may call the API from (`*` = any). Empty = none: cross-site
    requests are refused."""
    allowed_hosts: CommaList = []
    """Host header values accepted besides localhost/127.0.0.1/[::1] when bound to
    loopback (DNS-rebinding guard); `*` turns the check off."""
    header_timeout_seconds: float = 10.0
    """A connection must finish sending a request's headers within this time."""
    body_timeout_seconds: float = 120.0
    """A request's body must arrive within this time after its headers."""
    max_connections: int = 1024
    """Open connections beyond this get 503 + Retry-After and are closed."""
    max_queued_requests: int = 256
    """Generation requests waiting for a decode slot beyond this get 503 + Retry-After."""
    drain_seconds: float = 15.0
    """On SIGTERM/SIGINT: how long in-flight requests may still run before their streams
    end with an error event."""

    @field_validator("api_keys", "cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v
