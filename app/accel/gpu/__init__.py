"""The GPU acceleration wing: kernels of ours where MLX's CUDA backend is weak."""
