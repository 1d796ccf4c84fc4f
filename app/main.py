"""create_app(settings): the FastAPI application and its lifespan (engine start/stop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.accel.process import describe_runtime, prepare_process
from app.api import audio, cache, chat, completions, embeddings, metrics, models, responses
from app.api.errors import install_error_handlers
from app.api.request_id import RequestIdMiddleware
from app.api.security import AccessMiddleware
from app.engine.engine import Engine
from app.metrics import Metrics
from app.models.registry import Registry
from app.serving.chat import CACHE_HEADER, ChatService
from app.serving.completions import CompletionService
from app.serving.embeddings import EmbeddingService
from app.serving.response_store import ResponseStore
from app.serving.responses import ResponsesService
from app.serving.transcribe import TranscriptionService
from app.settings import Settings

logger = logging.getLogger(__name__)


async def _eager_load(app: FastAPI) -> None:
    registry: Registry = app.state.registry
    if not registry.default_chat:
        return
    spec = registry.get(registry.default_chat)
    assert spec is not None
    try:
        await app.state.engine.chat_model(spec)
    except Exception as exc:  # reported by /health; the server keeps running
        logger.exception("loading default model %s failed", spec.id)
        app.state.load_error = str(exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    prepare_process()  # before the engine's first MLX call; a no-op if the CLI did it
    settings = settings or Settings()
    registry = Registry.from_yaml(settings.models, settings.default_model,
                                  settings.default_transcription_model, settings.model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("runtime: %s", describe_runtime())
        engine = Engine(settings, registry, app.state.metrics)
        engine.start(asyncio.get_running_loop())
        app.state.engine = engine
        app.state.chat = ChatService(engine, registry, settings)
        app.state.completions = CompletionService(engine, registry, settings)
        app.state.transcribe = TranscriptionService(engine, registry, settings)
        app.state.embeddings = EmbeddingService(engine, registry)
        stored = settings.responses_dir or \
            (settings.kv_dir / "responses" if settings.kv_dir is not None else None)
        app.state.responses = ResponsesService(app.state.chat, ResponseStore(stored))
        app.state.load_error = None
        loader = asyncio.create_task(_eager_load(app)) if settings.eager_load else None
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="mlxd", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = Metrics()  # its own registry: several apps in one process never collide
    install_error_handlers(app)
    # Starlette runs the last one added first: request ids on every answer, CORS headers
    # (and preflights) before the access checks, which refuse before any route runs.
    app.add_middleware(AccessMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["x-request-id", CACHE_HEADER])
    app.add_middleware(RequestIdMiddleware)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(responses.router)
    app.include_router(models.router)
    app.include_router(cache.router)
    app.include_router(audio.router)
    app.include_router(metrics.router)
    return app
