"""Process set-up that must happen before MLX loads, and the start-up log line.

An explicit call, not an import side effect: the entry points (CLI, `create_app`, the
test conftest, the benchmarks) call `prepare_process()` before their first `mlx.core`
import; everything else may import `app` freely.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.accel.cpu import blas, process


@dataclass(slots=True, frozen=True)
class ProcessSetup:
    blas: blas.BlasInfo
    tuning: dict[str, str]
    """What the CPU process tuning set (empty when off or not Linux)."""


def prepare_process() -> ProcessSetup:
    """CPU process tuning, then OpenBLAS (Linux); idempotent, a no-op elsewhere."""
    tuning = process.configure()
    return ProcessSetup(blas.load_openblas(), tuning)


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
