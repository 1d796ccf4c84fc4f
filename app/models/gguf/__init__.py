"""GGUF chat models: the loader (weights into mlx-lm's llama class) and the tokenizer
rebuilt from the file's metadata."""

from app.models.gguf.loader import load_gguf

__all__ = ["load_gguf"]
