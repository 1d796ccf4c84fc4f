"""Write CTranslate2 model.bin files: tests build tiny synthetic Whisper models with it
(app/models/whisper/ct2.py only reads them)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from app.models.whisper.ct2 import DTYPES, MAX_BINARY_VERSION


def write_ct2(
    path: str | Path,
    variables: dict[str, np.ndarray],
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    aliases: dict[str, str] | None = None,
) -> None:
    """Write a version-6 model.bin."""
    ids = {dt: i for i, dt in DTYPES.items()}
    out = bytearray(struct.pack("<I", MAX_BINARY_VERSION))
    out += _pack_string(spec) + struct.pack("<I", revision)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        arr = np.ascontiguousarray(value)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        out += _pack_string(name) + struct.pack("<B", arr.ndim)
        out += struct.pack(f"<{arr.ndim}I", *arr.shape)
        out += struct.pack("<BI", ids[np.dtype(dtype)], arr.nbytes) + arr.astype(dtype).tobytes()
    pairs = aliases or {}
    out += struct.pack("<I", len(pairs))
    for alias, target in pairs.items():
        out += _pack_string(alias) + _pack_string(target)
    Path(path).write_bytes(bytes(out))


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw
