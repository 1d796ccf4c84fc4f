"""Everything that only runs on an x86 CPU under `mlx[cpu]` (see app/accel/__init__.py)."""
