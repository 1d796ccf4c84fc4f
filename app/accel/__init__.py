"""Acceleration: faster paths for a device where MLX's own ops leave speed on the table.

Today that is an x86 CPU under `mlx[cpu]` (app/accel/cpu/): OpenBLAS and process tuning
before MLX loads, polynomial-exp kernels, panel matmuls and numpy decode steps. Two
calls reach it, and nothing else in the server names it:

- `app.accel.process.prepare_process()`: once, before anything imports `mlx.core`
  (the CLI, `create_app`, the test conftest and the benchmarks call it);
- `app.accel.choose.accelerate_chat()` / `accelerate_whisper()`: once per loaded model,
  from the engine's model manager; they decide what that model runs on.

This package's own import touches nothing (no MLX, no BLAS).
"""
