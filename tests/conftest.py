"""Shared fixtures. OpenBLAS must be in the process before anything imports mlx."""

from app.blas import load_openblas

load_openblas()
