"""mlxd: a local OpenAI-compatible inference server on one MLX engine thread."""

# OpenBLAS must be loaded before anything imports mlx.core (see app/blas.py); doing it
# here covers every entry point (CLI, uvicorn factory, tests, bench scripts).
from app.blas import load_openblas

load_openblas()
