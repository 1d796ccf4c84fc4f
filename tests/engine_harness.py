"""Driving an Engine in-process on the tiny random-weight model (tests/engine/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.engine.engine import Engine
from app.engine.request import Delta, Failed, Finished, GenerationRequest, SamplingParams
from app.models.registry import ModelSource, ModelSpec, Registry
from app.settings import Settings

MODEL_ID = "tiny"


@dataclass
class Result:
    tokens: list[int]
    text: str
    finish: Finished | None
    error: Failed | None


def make_engine(tiny_dir: Path, **settings: object) -> tuple[Engine, ModelSpec]:
    spec = ModelSpec(MODEL_ID, "chat", ModelSource(path=str(tiny_dir)))
    engine = Engine(Settings(eager_load=False, **settings), Registry([spec]))  # type: ignore[arg-type]
    return engine, spec


async def collect(engine: Engine, req: GenerationRequest) -> Result:
    tokens: list[int] = []
    text = ""
    async for ev in engine.submit(req):
        if isinstance(ev, Delta):
            tokens += ev.token_ids
            text += ev.text
        elif isinstance(ev, Finished):
            return Result(tokens, text, ev, None)
        elif isinstance(ev, Failed):
            return Result(tokens, text, None, ev)
    raise AssertionError("stream ended without a final event")


def prompt_ids(engine: Engine, text: str) -> list[int]:
    handle = engine.loaded_chat(MODEL_ID)
    assert handle is not None
    return handle.tokenizer.encode(text)


def no_eos(engine: Engine, **kw: object) -> SamplingParams:
    """Forbid end-of-sequence tokens so the length of the output is predictable."""
    handle = engine.loaded_chat(MODEL_ID)
    assert handle is not None
    bias = {t: -100.0 for t in handle.tokenizer.eos_token_ids}
    return SamplingParams(logit_bias=bias, **kw)  # type: ignore[arg-type]
