"""BERT-family sentence encoders (all-MiniLM, bge, e5): pure MLX model, loader, tokenizer."""

from app.models.bert.load import LoadedEmbeddingModel, load_bert

__all__ = ["LoadedEmbeddingModel", "load_bert"]
