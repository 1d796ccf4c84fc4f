"""Resident KV caches through the engine, on the tiny random-weight model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.engine.engine import Engine
from app.engine.request import Admitted, GenerationRequest, SamplingParams
from tests.engine_harness import MODEL_ID, collect, make_engine, no_eos, prompt_ids


async def first_event(engine: Engine, req: GenerationRequest) -> Admitted:
    stream = engine.submit(req)
    ev = await stream.get()
    assert isinstance(ev, Admitted), ev
    async for _ in stream:
        pass
    return ev


async def test_greedy_identical_with_and_without_cache_hit(engine: Engine) -> None:
    ids = prompt_ids(engine, "Paris is the capital of France. " * 6)
    req = lambda: GenerationRequest(MODEL_ID, ids, 16, no_eos(engine, temperature=0.0))  # noqa: E731
    cold = await collect(engine, req())
    assert cold.finish and cold.finish.usage.cached_tokens == 0
    warm = await collect(engine, req())
    assert warm.finish and warm.finish.usage.cached_tokens == len(ids) - 1
    assert warm.tokens == cold.tokens


async def test_multi_turn_reuses_prompt_and_completion(engine: Engine) -> None:
    history = prompt_ids(engine, "Hello, world! How are you today?")
    prev_total = 0
    for turn in range(4):
        res = await collect(engine, GenerationRequest(
            MODEL_ID, history, 8, no_eos(engine, temperature=0.0), session="conv-1"))
        assert res.finish is not None
        if turn:
            assert res.finish.usage.cached_tokens >= prev_total
        prev_total = len(history) + len(res.tokens)
        history = history + res.tokens + prompt_ids(engine, " I am fine, thank you.")


async def test_shared_prefix_across_sessions_and_batched_mixed_prefixes(engine: Engine) -> None:
    system = prompt_ids(engine, "The quick brown fox jumps over the lazy dog. " * 5)
    await collect(engine, GenerationRequest(MODEL_ID, system + prompt_ids(engine, "Hello"), 4,
                                            no_eos(engine, temperature=0.0), session="a"))
    # Different cached-prefix lengths decode together, and match their cold outputs.
    tails = ["Paris", "Numbers: 1 2 3", "def add(a, b):"]
    reqs = [GenerationRequest(MODEL_ID, system + prompt_ids(engine, t), 10,
                              no_eos(engine, temperature=0.0), session=f"s{i}")
            for i, t in enumerate(tails)]
    warm = await asyncio.gather(*(collect(engine, r) for r in reqs))
    for res in warm:
        assert res.finish and res.finish.usage.cached_tokens >= len(system)
    cold_engine, spec = make_engine(Path(engine.registry.specs[0].source.path or ""),
                                    kv_cache=False)
    cold_engine.start(asyncio.get_running_loop())
    try:
        await cold_engine.chat_model(spec)
        for r, w in zip(reqs, warm):
            cold = await collect(cold_engine, GenerationRequest(
                MODEL_ID, r.prompt_tokens, 10, no_eos(engine, temperature=0.0)))
            assert cold.tokens == w.tokens
    finally:
        cold_engine.stop()


async def test_request_larger_than_budget_is_a_400_and_engine_continues(tiny_dir: Path) -> None:
    eng, spec = make_engine(tiny_dir, kv_budget_bytes=4096)
    eng.start(asyncio.get_running_loop())
    try:
        await eng.chat_model(spec)
        res = await collect(eng, GenerationRequest(MODEL_ID, prompt_ids(eng, "Hello"), 50,
                                                   no_eos(eng, temperature=0.0)))
        # It can never fit: a 400 that says how much it needs, no Retry-After.
        assert res.error is not None and res.error.status == 400, res.error
        assert not res.error.retry_after and "MiB" in res.error.message
        assert res.error.code == "kv_budget_too_small"
    finally:
        eng.stop()


async def test_eviction_under_tiny_budget(tiny_dir: Path) -> None:
    eng, spec = make_engine(tiny_dir, kv_budget_bytes=100_000)
    eng.start(asyncio.get_running_loop())
    try:
        await eng.chat_model(spec)
        for i in range(6):
            ids = prompt_ids(eng, f"{i} " + "Hello, world! How are you today? " * 8)
            res = await collect(eng, GenerationRequest(MODEL_ID, ids, 8,
                                                       no_eos(eng, temperature=0.0)))
            assert res.error is None
        stats = await eng.call(eng.cache_stats)
        assert stats[MODEL_ID].evictions > 0
        assert stats[MODEL_ID].resident_bytes <= 100_000
    finally:
        eng.stop()


async def test_staggered_finishes_in_pipelined_batch_store_exact_kv(engine: Engine) -> None:
    """Rows finishing one step apart while decode is pipelined (no logits processors):
    each stored entry covers exactly prompt + completion. A row kept to feed its final
    token once fed a second, sampled-after-the-end token here and its entry was lost."""
    reqs = [GenerationRequest(MODEL_ID, prompt_ids(engine, f"Story number {i}: once upon"),
                              3 + i, SamplingParams(temperature=0.0), session=f"stagger-{i}")
            for i in range(6)]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    sessions = {s.key: s for _, s in await engine.call(engine.cache_sessions)}
    for req, res in zip(reqs, results):
        assert res.finish is not None
        assert req.session is not None
        assert sessions[req.session].tokens == len(req.prompt_tokens) + len(res.tokens)
