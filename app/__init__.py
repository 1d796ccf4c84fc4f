"""mlxd: a local OpenAI-compatible inference server on one MLX engine thread."""

# Process tuning and OpenBLAS must come before anything imports mlx.core (see
# app/cpu_runtime.py and app/blas.py); doing it here covers every entry point (CLI,
# uvicorn factory, tests, bench scripts).
from app.blas import load_openblas
from app.cpu_runtime import configure as configure_cpu_runtime

configure_cpu_runtime()
load_openblas()
