"""Server settings: environment variables (MLXD_*) and CLI flags override defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    max_batch: int = 32
    """Most sequences decoding together in one step, per model."""
    prefill_chunk: int = 512
    """Prompt tokens per prefill step while nothing else is decoding."""
    prefill_busy_seconds: float = 0.25
    """Target seconds per prefill chunk while other streams decode (keeps them flowing)."""
    keepalive_seconds: float = 5.0
    """Seconds between SSE comment keepalives while a stream waits (long prefill)."""
    default_max_tokens: int | None = None
    """max_tokens when a request and models.yaml give none; None = the rest of the context."""
    cpu_fast_kernels: bool = True
    """On an x86 CPU, compute with app/accel/cpu/ where it is faster: polynomial-exp attention
    and SwiGLU in mlx-lm, numpy decode steps for Llama-family chat models, numpy GELU/softmax,
    logits and decode steps for Whisper (chosen per model at load, app/accel/choose.py);
    False = MLX's and mlx-lm's own ops throughout, every model."""
    kv_cache: bool = True
    """Keep KV caches resident between requests (prefix reuse, sessions); False = always cold."""
    kv_budget_bytes: int | None = None
    """Byte budget over all resident KV caches; None = derived from available memory."""
    kv_dir: Path | None = None
    """Directory for spilled/persisted session caches; None = no persistence."""
    max_audio_bytes: int = 25 * 1024 * 1024
    """Largest accepted audio upload in bytes (413 above it)."""
    model_idle_ttl_seconds: float | None = None
    """Unload a non-default model after this many idle seconds; None = keep loaded."""
    log_level: str = "info"
    """Python logging level name."""
    hf_offline: bool = Field(default=False)
    """Never reach the Hugging Face Hub; only models already in the local cache load."""
