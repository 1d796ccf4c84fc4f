"""Process set-up that must happen before MLX loads, and the start-up log line.

An explicit call, not an import side effect: the entry points (CLI, `create_app`, the
test conftest, the benchmarks) call `prepare_process()` before their first `mlx.core`
import; everything else may import `app` freely.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from dataclasses import dataclass

from app.accel.cpu import blas, process


@dataclass(slots=True, frozen=True)
class ProcessSetup:
    blas: blas.BlasInfo
    tuning: dict[str, str]
    """What the CPU process tuning set (empty when off or not Linux)."""


def prepare_process() -> ProcessSetup:
    """CPU process tuning, then OpenBLAS (Linux), then mlx-lm without its fd limits;
    idempotent, a no-op elsewhere."""
    tuning = process.configure()
    setup = ProcessSetup(blas.load_openblas(), tuning)
    with _fd_limits_kept():
        import mlx_lm.utils  # noqa: F401
    return setup


@contextlib.contextmanager
def _fd_limits_kept() -> Iterator[None]:
    """mlx-lm's utils module sets RLIMIT_NOFILE to (2048, 4096) when imported: on a
    machine allowing more that lowers the hard limit for good (a non-root process cannot
    raise it again), which caps a server's connections and every child it starts (the
    replica tests' HAProxy refused to start under it). While it is first imported, a
    request that would lower either limit is ignored; raising one still goes through."""
    original = resource.setrlimit

    def keep(which: int, limits: tuple[int, int]) -> None:
        if which == resource.RLIMIT_NOFILE:
            soft, hard = resource.getrlimit(which)
            limits = (max(soft, limits[0]) if soft != resource.RLIM_INFINITY else soft,
                      max(hard, limits[1]) if hard != resource.RLIM_INFINITY else hard)
            if limits[1] != resource.RLIM_INFINITY and limits[0] > limits[1]:
                limits = (limits[1], limits[1])
        original(which, limits)

    resource.setrlimit = keep  # type: ignore[assignment]
    try:
        yield
    finally:
        resource.setrlimit = original


def describe_runtime() -> str:
    """One line for the start-up log: MLX version, device, BLAS, dtype, tuning."""
    setup = prepare_process()  # before MLX loads, if nobody did it yet
    import mlx.core as mx

    device = mx.default_device()
    dtype = "float32 (CPU: half-precision matmuls are slow here)" if device == mx.cpu \
        else "model dtype (GPU)"
    version = getattr(mx, "__version__", "?")
    tuning = ", ".join(f"{k}={v}" for k, v in setup.tuning.items()) or "none"
    return f"mlx {version}, device {device}, BLAS {setup.blas.describe()}" + \
        f", compute dtype {dtype}, CPU process tuning: {tuning}"
