"""Embeddings between the HTTP route and the engine (async, no MLX).

Inputs are checked and tokenized here (in a worker thread: the tokenizer runs in Rust and
releases the GIL), the engine embeds them batched with other requests, and the vectors
become OpenAI's list of float arrays or base64 strings (little-endian float32).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from app.engine.engine import Engine
from app.engine.models import EmbeddingModelHandle, ModelsShutDown
from app.models.registry import Registry, SourceUnavailable
from app.protocol.embeddings import EmbeddingRequest
from app.protocol.errors import APIError
from app.serving.generation import model_spec, unavailable
from app.serving.reply import Complete, Guard, Reply


class EmbeddingService:
    def __init__(self, engine: Engine, registry: Registry) -> None:
        self.engine = engine
        self.registry = registry

    async def handle(self, body: EmbeddingRequest, guard: Guard) -> Reply:
        handle = await self._model(body.model)
        dims = _dimensions(body.dimensions, handle)
        rows = await run_in_threadpool(_tokenize, body, handle)
        try:
            vectors = await guard(self.engine.embed(handle.spec, rows))
        except ModelsShutDown as exc:
            raise APIError(503, str(exc), type="server_error", code="shutdown") from exc
        if dims < handle.dimensions:
            vectors = vectors[:, :dims]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        tokens = sum(len(r) for r in rows)
        doc = {"object": "list", "data": data, "model": handle.spec.id,
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Complete(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))

    async def _model(self, name: str | None) -> EmbeddingModelHandle:
        spec = model_spec(self.registry, name, self.registry.default_embedding, "embedding")
        try:
            return await self.engine.embedding_model(spec)
        except SourceUnavailable as exc:
            raise unavailable(spec.id, exc) from exc


def _dimensions(asked: int | None, handle: EmbeddingModelHandle) -> int:
    if asked is None or asked == handle.dimensions:
        return handle.dimensions
    if asked > handle.dimensions or not handle.spec.matryoshka:
        what = f"at most {handle.dimensions}" if handle.spec.matryoshka else \
            f"only its full {handle.dimensions} (it is not trained for shorter vectors)"
        raise APIError(400, f"model {handle.spec.id!r} gives {what} dimensions; "
                       f"{asked} were asked for", param="dimensions")
    return asked


def _tokenize(body: EmbeddingRequest, handle: EmbeddingModelHandle) -> list[list[int]]:
    items = body.items()
    tok = handle.tokenizer
    if isinstance(items[0], str):
        texts: list[str] = items  # type: ignore[assignment]
        for i, text in enumerate(texts):
            if not text:
                raise APIError(400, f"input[{i}] is an empty string", param="input")
        rows = tok.encode_batch(texts)
    else:
        rows = []
        for i, ids in enumerate(items):
            assert isinstance(ids, list)
            if not ids:
                raise APIError(400, f"input[{i}] is an empty token array", param="input")
            if min(ids) < 0 or max(ids) >= tok.vocab_size:
                raise APIError(400, f"input[{i}] has token ids outside the vocabulary "
                               f"(0..{tok.vocab_size - 1})", param="input")
            rows.append(tok.frame(ids))
    for i, row in enumerate(rows):
        if len(row) > handle.max_tokens:
            raise APIError(400, f"input[{i}] has {len(row)} tokens; model {handle.spec.id!r} "
                           f"takes at most {handle.max_tokens}", param="input",
                           code="context_length_exceeded")
    return rows


def _encode(vec: np.ndarray, fmt: str) -> Any:
    """base64 of little-endian float32, or the array itself (orjson writes each float32
    in its shortest form that reads back to the same float32)."""
    if fmt == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return np.ascontiguousarray(vec, dtype=np.float32)
