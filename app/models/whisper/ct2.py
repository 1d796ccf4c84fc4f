"""Read CTranslate2's `model.bin` into numpy arrays (no ctranslate2 dependency).

Layout (little-endian): u32 binary version; from v2 a spec name (u16 length + bytes with
a trailing NUL) and u32 spec revision; u32 variable count; per variable a name, u8 rank,
u32 dims[rank], then from v4 u8 dtype + u32 byte count (before v4: u8 item size + u32
element count) and the raw bytes; from v3 a u32 alias count and (alias, target) names.
"""

from __future__ import annotations

import logging
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODEL_FILE = "model.bin"
FIRST_PART = "model.bin.part1"  # a model.bin split in pieces (packages have size limits)
MAX_BINARY_VERSION = 6  # newest layout this reader knows; newer files are refused
# CTranslate2's DataType enum, in order.
DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
BFLOAT16_ID = 5
_ITEM_SIZE_DTYPES: dict[int, np.dtype[Any]] = {
    4: np.dtype("<f4"),
    2: np.dtype("<i2"),
    1: np.dtype("i1"),
}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass(slots=True)
class CT2Model:
    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        try:
            return self.variables[name]
        except KeyError:
            raise CT2FormatError(f"model.bin has no variable {name!r}") from None

    def scalar(self, name: str, default: int | None = None) -> int:
        if name not in self.variables:
            if default is None:
                raise CT2FormatError(f"model.bin has no variable {name!r}")
            return default
        return int(self.variables[name].reshape(-1)[0])


class _Reader:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"model.bin is truncated at byte {self.pos} (wanted {n} more)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        return int(struct.unpack("<" + fmt, self.take(size))[0])

    def string(self) -> str:
        length = self.unpack("H")
        return bytes(self.take(length)).rstrip(b"\0").decode("utf-8")


def is_ct2_folder(folder: Path) -> bool:
    return (folder / MODEL_FILE).exists() or (folder / FIRST_PART).exists()


def read_ct2(path: str | Path, parts: list[Path] | None = None) -> CT2Model:
    """Parse `path` (a model.bin or the folder holding one); arrays are copies in RAM.

    A folder with `model.bin.part1` instead is read as that file followed by `parts`
    (the further pieces, in order), joined in memory.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).exists() and (path / FIRST_PART).exists():
            pieces = [path / FIRST_PART, *(parts or [])]
            return parse_ct2(b"".join(p.read_bytes() for p in pieces))
        path = path / MODEL_FILE
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            return _parse(_Reader(view))
        finally:
            view.release()


def parse_ct2(data: bytes) -> CT2Model:
    return _parse(_Reader(memoryview(data)))


def _parse(r: _Reader) -> CT2Model:
    version = r.unpack("I")
    if version < 1 or version > MAX_BINARY_VERSION:
        raise CT2FormatError(f"unsupported CTranslate2 binary version {version}")
    spec, revision = "", 1
    if version >= 2:
        spec = r.string()
        revision = r.unpack("I")
    model = CT2Model(spec=spec, revision=revision, binary_version=version)
    for _ in range(r.unpack("I")):
        name = r.string()
        rank = r.unpack("B")
        shape = tuple(r.unpack("I") for _ in range(rank))
        if version >= 4:
            type_id = r.unpack("B")
            nbytes = r.unpack("I")
            if type_id == BFLOAT16_ID:
                raw = np.frombuffer(r.take(nbytes), dtype="<u2").astype(np.uint32) << 16
                model.variables[name] = raw.view(np.float32).reshape(shape)
                continue
            if type_id not in DTYPES:
                raise CT2FormatError(f"variable {name!r} has unknown dtype id {type_id}")
            dtype = DTYPES[type_id]
        else:
            item_size = r.unpack("B")
            dtype = _ITEM_SIZE_DTYPES[item_size]
            nbytes = r.unpack("I") * item_size
        arr = np.frombuffer(r.take(nbytes), dtype=dtype)
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"variable {name!r}: {arr.size} values for shape {shape}")
        model.variables[name] = arr.reshape(shape).copy()  # copy: the mmap closes after
    if version >= 3:
        for _ in range(r.unpack("I")):
            alias, target = r.string(), r.string()
            model.variables[alias] = model.get(target)
    return model


# -- CTranslate2 WhisperSpec -> our module names ----------------------------------------
_BLOCK_PARTS = {
    "self_attention/layer_norm": "attn_ln",
    "self_attention/linear_0": "attn.qkv",
    "self_attention/linear_1": "attn.out",
    "attention/layer_norm": "cross_ln",
    "attention/linear_0": "cross.q",
    "attention/linear_1": "cross.kv",
    "attention/linear_2": "cross.out",
    "ffn/layer_norm": "mlp_ln",
    "ffn/linear_0": "mlp.fc1",
    "ffn/linear_1": "mlp.fc2",
}
_TOP_PARTS = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/layer_norm": "encoder.ln_post",
    "encoder/position_encodings/encodings": "encoder.positions",
    "decoder/layer_norm": "decoder.ln",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "decoder/position_encodings/encodings": "decoder.positions",
}
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}


def whisper_weights(model: CT2Model) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Dims (WhisperDims fields) and float weights under our module names.

    int8/int16 weights are dequantized with their `weight_scale` (CTranslate2 stores
    q = w * scale per output row): MLX's CPU matmuls are fast only in float32.
    """
    if not model.spec.startswith("Whisper"):
        raise CT2FormatError(f"model.bin holds a {model.spec or 'pre-v2'} model, not Whisper")
    out: dict[str, np.ndarray] = {}
    for name, value in model.variables.items():
        target = _target_name(name)
        if target is None:
            continue
        if np.issubdtype(value.dtype, np.integer):
            scale = model.variables.get(name + "_scale")
            if scale is None:
                raise CT2FormatError(f"{name} is {value.dtype} with no weight_scale")
            value = value.astype(np.float32) / scale.astype(np.float32).reshape(-1, 1)
        if target.endswith("conv1.weight") or target.endswith("conv2.weight"):
            value = value.transpose(0, 2, 1)  # [out, in, k] -> MLX's [out, k, in]
        out[target] = value
    conv1 = out["encoder.conv1.weight"]
    dims = {
        "n_mels": int(conv1.shape[2]),
        "n_audio_ctx": int(out["encoder.positions"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": model.scalar("encoder/num_heads"),
        "n_audio_layer": _count_layers(model, "encoder"),
        "n_vocab": int(out["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(out["decoder.positions"].shape[0]),
        "n_text_state": int(out["decoder.token_embedding.weight"].shape[1]),
        "n_text_head": model.scalar("decoder/num_heads"),
        "n_text_layer": _count_layers(model, "decoder"),
    }
    return dims, out


def _target_name(name: str) -> str | None:
    if name.endswith("_scale") or name.startswith("decoder/projection"):
        return None  # scales are folded in; the projection is tied to the embeddings
    for prefix, target in _TOP_PARTS.items():
        if name == prefix:
            return target
        if name.startswith(prefix + "/"):
            leaf = name[len(prefix) + 1 :]
            return f"{target}.{_LEAF[leaf]}" if leaf in _LEAF else None
    parts = name.split("/")
    if len(parts) >= 4 and parts[1].startswith("layer_"):
        index = parts[1][len("layer_") :]
        module = _BLOCK_PARTS.get("/".join(parts[2:-1]))
        if module is not None and parts[-1] in _LEAF:
            return f"{parts[0]}.blocks.{index}.{module}.{_LEAF[parts[-1]]}"
    return None


def _count_layers(model: CT2Model, side: str) -> int:
    parts = (n.split("/") for n in model.variables if n.startswith(side + "/"))
    return len({p[1] for p in parts if len(p) > 2 and p[1].removeprefix("layer_").isdigit()})
