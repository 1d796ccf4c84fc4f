"""mlxd: a local OpenAI-compatible inference server on one MLX engine thread."""
