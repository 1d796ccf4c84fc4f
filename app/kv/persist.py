"""Save and load one session's KV entry as a safetensors file.

The file holds `layers.{i}.keys` / `layers.{i}.values` ([1, kv_heads, T, head_dim]),
`tokens` (int32, T) and string metadata: format version, session key, fingerprint
(model + dtype + chat template, from the engine). The fingerprint is checked from the
JSON header alone, so a file written for another model never has its arrays read.
Filenames are a hash of the session key: keys are user input, never path components.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import mlx.core as mx

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
TOKENS_KEY = "tokens"
META_FORMAT = "mlxd_kv_format"
META_SESSION = "session"
META_FINGERPRINT = "fingerprint"
META_LAYERS = "n_layers"
META_TOKENS = "n_tokens"
# Safetensors starts with a little-endian u64 header length, then the JSON header.
HEADER_LEN_BYTES = 8
# A header describes 2 tensors per layer: even 1,000 layers is a few hundred KiB, so
# anything past this is a corrupt or foreign file, not worth reading into memory.
MAX_HEADER_BYTES = 16 << 20
# Temp files older than this are leftovers of a crash mid-write, safe to delete.
STALE_TEMP_SECONDS = 3600.0

STATUS_OK = "ok"
STATUS_OTHER_MODEL = "other-model"
STATUS_MISSING = "missing"
STATUS_CORRUPT = "corrupt"

Layers = list[tuple[mx.array, mx.array]]


@dataclass(slots=True)
class DiskHeader:
    """What a file's header says, read without touching its arrays."""

    path: Path
    session: str
    fingerprint: str
    n_tokens: int
    nbytes: int
    """Bytes of the keys/values tensors (what the entry costs once loaded)."""
    mtime: float
    """Last write, seconds since the epoch (the session's last use before it spilled)."""


@dataclass(slots=True)
class Loaded:
    status: str
    """STATUS_OK, STATUS_OTHER_MODEL, STATUS_MISSING or STATUS_CORRUPT."""
    header: DiskHeader | None = None
    tokens: tuple[int, ...] = ()
    layers: Layers = field(default_factory=list)
    """Evaluated arrays; empty unless status is STATUS_OK."""


def session_filename(session: str) -> str:
    return hashlib.sha256(session.encode("utf-8")).hexdigest() + SUFFIX


def session_path(directory: Path, session: str) -> Path:
    return directory / session_filename(session)


def save_entry(
    path: Path, tokens: tuple[int, ...], layers: Layers, session: str, fingerprint: str
) -> DiskHeader:
    """Write atomically: a crash leaves either the old file or the new one, never half."""
    arrays: dict[str, mx.array] = {TOKENS_KEY: mx.array(tokens, dtype=mx.int32)}
    nbytes = 0
    for i, (keys, values) in enumerate(layers):
        arrays[f"layers.{i}.keys"] = keys
        arrays[f"layers.{i}.values"] = values
        nbytes += keys.nbytes + values.nbytes
    metadata = {
        META_FORMAT: FORMAT_VERSION,
        META_SESSION: session,
        META_FINGERPRINT: fingerprint,
        META_LAYERS: str(len(layers)),
        META_TOKENS: str(len(tokens)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=path.parent)
    try:
        # A file object, not a name: mx.save_safetensors appends ".safetensors" to names.
        with os.fdopen(fd, "wb") as f:
            mx.save_safetensors(f, arrays, metadata)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return DiskHeader(path, session, fingerprint, len(tokens), nbytes, time.time())


def read_header(path: Path) -> DiskHeader | None:
    """Parse the safetensors JSON header only; None if missing, foreign or corrupt."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(HEADER_LEN_BYTES))
            if size > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(size))
        mtime = path.stat().st_mtime
        meta = header.get("__metadata__") or {}
        if meta.get(META_FORMAT) != FORMAT_VERSION:
            return None
        nbytes = 0
        for name, info in header.items():
            if name.startswith("layers."):
                start, end = info["data_offsets"]
                nbytes += int(end) - int(start)
        return DiskHeader(
            path=path,
            session=str(meta[META_SESSION]),
            fingerprint=str(meta[META_FINGERPRINT]),
            n_tokens=int(meta[META_TOKENS]),
            nbytes=nbytes,
            mtime=mtime,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        logger.warning("unreadable KV cache file %s", path, exc_info=True)
        return None


def load_entry(path: Path, fingerprint: str, session: str | None = None) -> Loaded:
    """Load one entry; arrays are only read when the fingerprint (and session) match."""
    if not path.exists():
        return Loaded(STATUS_MISSING)
    header = read_header(path)
    if header is None:
        return Loaded(STATUS_CORRUPT)
    if header.fingerprint != fingerprint:
        return Loaded(STATUS_OTHER_MODEL, header)
    if session is not None and header.session != session:
        return Loaded(STATUS_MISSING, header)  # not this session's file (hash collision)
    try:
        arrays, meta = cast(
            "tuple[dict[str, mx.array], dict[str, str]]",
            mx.load(str(path), return_metadata=True),
        )
        n_layers = int(meta[META_LAYERS])
        tokens = tuple(cast("list[int]", arrays[TOKENS_KEY].tolist()))
        layers = [
            (arrays[f"layers.{i}.keys"], arrays[f"layers.{i}.values"]) for i in range(n_layers)
        ]
        # Evaluate now: the data must not depend on the file once it may be deleted.
        mx.eval([a for kv in layers for a in kv])
    except Exception:  # noqa: BLE001 - any read/shape failure means a bad file
        logger.warning("corrupt KV cache file %s", path, exc_info=True)
        return Loaded(STATUS_CORRUPT, header)
    if len(tokens) != header.n_tokens or any(
        k.shape[2] != len(tokens) or v.shape[2] != len(tokens) for k, v in layers
    ):
        logger.warning("KV cache file %s: token count does not match arrays", path)
        return Loaded(STATUS_CORRUPT, header)
    return Loaded(STATUS_OK, header, tokens, layers)


def scan(directory: Path) -> list[DiskHeader]:
    """Headers of every entry file in `directory`; removes stale temp files."""
    found: list[DiskHeader] = []
    if not directory.is_dir():
        return found
    now = time.time()
    for path in directory.iterdir():
        if path.name.startswith(TEMP_PREFIX):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
            continue
        if path.suffix != SUFFIX or not path.is_file():
            continue
        header = read_header(path)
        if header is None:
            continue
        if path.name != session_filename(header.session):
            continue  # renamed or foreign file: lookups by key would never find it
        found.append(header)
    return found
