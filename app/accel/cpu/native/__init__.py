"""C kernels of the CPU wing, compiled for this machine at first use.

`-march=native` code cannot ship in a wheel that runs everywhere, and the kernels are a
few hundred lines: the C source ships with the package and the system compiler builds it
into a per-user cache the first time a model needs it (~1 s), keyed by the source, the
compiler and the CPU's flags. No compiler, or a failed build: `library()` returns None
(logged once) and callers keep their numpy/MLX path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "qmatmul.c", HERE / "decode.c", HERE / "qgemm.c",
           HERE / "prefill_attention.c", HERE / "step.c")
HEADERS = (HERE / "pool.h", HERE / "simd.h", HERE / "kernels.h")
FLAGS = ("-O3", "-shared", "-fPIC", "-std=gnu11", "-pthread")
# MLXD_NATIVE_MARCH=haswell (or x86-64, ...): build for that target instead of this CPU, to
# run the AVX2 and plain-C paths on a machine that has AVX-512 (the tests do)
MARCH_ENV = "MLXD_NATIVE_MARCH"
COMPILE_TIMEOUT = 120.0
_UNSET = object()
_lib: object = _UNSET


def cache_dir() -> Path:
    base = os.environ.get("MLXD_NATIVE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "mlxd-native" if base else Path.home() / ".cache" / "mlxd-native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _flags() -> tuple[str, ...]:
    return (f"-march={os.environ.get(MARCH_ENV) or 'native'}", *FLAGS)


def _build(cc: str) -> Path:
    key = hashlib.sha256()
    for part in (*(p.read_bytes() for p in (*SOURCES, *HEADERS)), cc.encode(),
                 " ".join(_flags()).encode(),
                 platform.machine().encode(), _cpu_flags().encode()):
        key.update(part)
        key.update(b"\0")
    target = cache_dir() / f"qmatmul-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: a concurrent process sees all of it or nothing
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *_flags(), "-o", tmp, *map(str, SOURCES), "-lm"], check=True,
                       capture_output=True, timeout=COMPILE_TIMEOUT)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or None where they cannot be had."""
    global _lib
    if _lib is not _UNSET:
        return _lib  # type: ignore[return-value]
    _lib = None
    cc = _compiler()
    if cc is None:
        logger.info("no C compiler: quantized CPU kernels unavailable")
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logger.warning("building the CPU kernels failed (%s) %s", exc,
                       detail.decode(errors="replace")[-500:])
        return None
    _declare(lib)
    _lib = lib
    logger.info("CPU kernels built for this machine (%s, %d-bit vectors, int8 path %d-bit)",
                cc, lib.qmatmul_isa(), lib.qmatmul_int8())
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    f32 = ctypes.POINTER(ctypes.c_float)
    u32 = ctypes.POINTER(ctypes.c_uint32)
    i = ctypes.c_int
    lib.qmatmul.argtypes = [f32, i, i, u32, f32, f32, i, i, f32, i, i, i]
    lib.qmatmul.restype = i
    lib.qmatmul_isa.argtypes = []
    lib.qmatmul_isa.restype = i
    lib.qmatmul_mt.argtypes = [f32, i, i, u32, f32, f32, i, i, f32, i, i, i, i]
    lib.qmatmul_mt.restype = i
    lib.qmatmul_threads.argtypes = [i]
    lib.qmatmul_threads.restype = i
    i8 = ctypes.POINTER(ctypes.c_int8)
    lib.qmatmul_int8.argtypes = []
    lib.qmatmul_int8.restype = i
    lib.quantize_rows.argtypes = [f32, i, i, i, i, i8, f32, f32]
    lib.quantize_rows.restype = None
    lib.qmatmul_i8_mt.argtypes = [i8, f32, f32, i, i, u32, f32, f32, i, i, f32, i, i, i, i]
    lib.qmatmul_i8_mt.restype = i
    lib.dequantize_mt.argtypes = [u32, f32, f32, i, i, i, i, f32, i]
    lib.dequantize_mt.restype = i
    i32 = ctypes.POINTER(ctypes.c_int32)
    lib.attend_mt.argtypes = [f32, i, i, i, i, f32, f32, ctypes.c_int64, i32, i,
                              ctypes.c_float, f32, f32, i]
    lib.attend_mt.restype = i
    ptr = ctypes.c_void_p  # the decoder's elementwise steps: ndarray.ctypes.data
    lib.rms_norm.argtypes = [ptr, i, i, ptr, ctypes.c_float, ptr]
    lib.rms_norm.restype = None
    lib.swiglu.argtypes = [ptr, i, i, ptr]
    lib.swiglu.restype = None
    lib.silu_mul_mt.argtypes = [ptr, ptr, ctypes.c_int64, ptr, i]
    lib.silu_mul_mt.restype = None
    lib.rope_store.argtypes = [ptr, i, i, i, i, ptr, ptr, ptr, ptr, ptr, ctypes.c_int64, i]
    lib.rope_store.restype = None
    lib.qmatmul_parts.argtypes = [ptr, i, i, i, ptr, ptr, ptr, ptr, i, i, ptr, i]
    lib.qmatmul_parts.restype = i
    lib.qgemm_available.argtypes = []
    lib.qgemm_available.restype = i
    lib.qgemm.argtypes = [ptr, i, i, ptr, ptr, ptr, i, i, i, ptr, i]
    lib.qgemm.restype = i
    lib.prefill_attention_available.argtypes = []
    lib.prefill_attention_available.restype = i
    lib.prefill_attend.argtypes = [ptr, i, i, i, ptr, ptr, ctypes.c_int64, i, i,
                                   ctypes.c_float, ptr, i]
    lib.prefill_attend.restype = i
    i64 = ctypes.c_int64
    f = ctypes.c_float
    lib.decode_layers.argtypes = [ptr, i, ptr, i, i, i, i, i, i, ptr, ptr, i64, i, ptr, ptr,
                                  ptr, f, f, i]
    lib.decode_layers.restype = i
    lib.decode_head.argtypes = [ptr, ptr, i, i, ptr, f, ptr, i]
    lib.decode_head.restype = i
    lib.prefill_layers.argtypes = [ptr, i, ptr, i, i, i, i, i, i, ptr, ptr, i64, i, ptr, ptr,
                                   f, f, i, i]
    lib.prefill_layers.restype = i
    lib.qmatmul_prefetch.argtypes = [i]
    lib.qmatmul_prefetch.restype = i
    lib.qmatmul_step.argtypes = [i]
    lib.qmatmul_step.restype = None
