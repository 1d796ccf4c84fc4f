"""GET /v1/models, /v1/models/{id} and /health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.engine.engine import Engine
from app.models.registry import ModelSpec, Registry
from app.protocol.errors import error_body, model_not_found

router = APIRouter()
CREATED = 1_700_000_000  # models.yaml has no dates; a fixed value keeps responses stable


def _model_json(spec: ModelSpec, engine: Engine) -> dict[str, Any]:
    handle = engine.loaded_chat(spec.id)
    entry: dict[str, Any] = {
        "id": spec.id, "object": "model", "created": CREATED, "owned_by": "mlxd",
        "kind": spec.kind, "aliases": spec.aliases,
        "loaded": handle is not None or engine.models.loaded(spec.id)}
    if spec.kind == "chat":
        entry["context_length"] = handle.context_length if handle else spec.context_length
    if (embedder := engine.models.embedding_handle(spec.id)) is not None:
        entry["dimensions"] = embedder.dimensions
        entry["context_length"] = embedder.max_tokens
    return entry


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry: Registry = request.app.state.registry
    # listed() checks files (and once the Hub): off the event loop
    specs = await run_in_threadpool(registry.listed)
    return {"object": "list",
            "data": [_model_json(s, request.app.state.engine) for s in specs]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    spec = request.app.state.registry.get(model_id)
    if spec is None:
        raise model_not_found(model_id)
    return _model_json(spec, request.app.state.engine)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    registry: Registry = request.app.state.registry
    engine: Engine = request.app.state.engine
    default = registry.default_chat
    if default and engine.loaded_chat(default) is None:
        failure = request.app.state.load_error
        msg = f"default model {default!r} failed to load: {failure}" if failure else \
            f"default model {default!r} is loading"
        return JSONResponse({"status": "loading" if not failure else "error",
                             **error_body(msg, "server_error", code="model_loading")},
                            status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ok", "default_model": default})
