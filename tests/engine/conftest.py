"""Fixtures of the engine tests: the tiny random-weight Llama and an engine serving it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.engine.engine import Engine
from tests.engine_harness import make_engine
from tests.tiny_model import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
async def engine(tiny_dir: Path) -> AsyncIterator[Engine]:
    eng, spec = make_engine(tiny_dir)
    eng.start(asyncio.get_running_loop())
    await eng.chat_model(spec)
    yield eng
    eng.stop()
