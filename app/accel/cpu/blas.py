"""Load a fast BLAS into the process before MLX is imported (Linux CPU only).

The `mlx-cpu` wheel links the reference BLAS, which ran a 1024² float32 matmul at
3.8 GFLOP/s here; Debian's OpenBLAS, loaded RTLD_GLOBAL first, ran it at ~70 GFLOP/s.
MLX's symbols resolve to whichever `cblas_sgemm` is loaded first, so this must run
before the first `import mlx.core` anywhere in the process. Which of its kernel sets
OpenBLAS runs is checked against the CPU's flags first (blas_core.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from dataclasses import dataclass

from app.accel.cpu import blas_core

logger = logging.getLogger(__name__)

# Debian's libopenblas0-pthread; the alternatives link first, then the direct path.
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)
ENV_DISABLE = "MLXD_NO_OPENBLAS"


@dataclass(slots=True)
class BlasInfo:
    name: str
    """'openblas', 'bundled' (the mlx-cpu wheel's reference BLAS) or 'platform' (macOS/CUDA)."""
    path: str | None = None
    core: str | None = None
    """OpenBLAS's kernel set in use (openblas_get_corename), e.g. 'SkylakeX'."""
    core_reason: str | None = None
    """Why that one: detected, chosen from the CPU flags, or set in the environment."""

    def describe(self) -> str:
        text = self.name + (f" ({self.path})" if self.path else "")
        if self.core:
            text += f", core {self.core}: {self.core_reason}"
        return text


_loaded: BlasInfo | None = None


def load_openblas() -> BlasInfo:
    """Preload OpenBLAS if this is Linux and it is installed; idempotent."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if platform.system() != "Linux":
        _loaded = BlasInfo("platform")
        return _loaded
    if "mlx.core" in sys.modules:
        logger.warning("mlx.core was imported before OpenBLAS could be loaded; BLAS is bundled")
        _loaded = BlasInfo("bundled")
        return _loaded
    if os.environ.get(ENV_DISABLE):
        _loaded = BlasInfo("bundled")
        return _loaded
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            choice = blas_core.choose_for(path)
            try:
                lib = _load(path, choice.set_to)
            except OSError as exc:  # a broken install must not stop the server
                logger.warning("could not load %s: %s", path, exc)
                continue
            _loaded = BlasInfo("openblas", path, _corename(lib), choice.reason)
            return _loaded
    logger.warning(
        "OpenBLAS not found (apt-get install libopenblas0-pthread); MLX on the CPU uses its "
        "bundled reference BLAS, about 20x slower for prompt processing"
    )
    _loaded = BlasInfo("bundled")
    return _loaded


def _load(path: str, core: str | None) -> ctypes.CDLL:
    """Load `path` globally, with OPENBLAS_CORETYPE=core while it initializes. The variable
    goes again right after: numpy's own OpenBLAS, loaded later, keeps its own detection."""
    if core is None:
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    os.environ[blas_core.CORE_TYPE_ENV] = core
    try:
        return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    finally:
        os.environ.pop(blas_core.CORE_TYPE_ENV, None)


def _corename(lib: ctypes.CDLL) -> str | None:
    fn = getattr(lib, "openblas_get_corename", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    name = fn()
    return name.decode() if name else None
