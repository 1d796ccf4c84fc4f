"""Engine tests on a tiny random-weight Llama (real MLX, real HF loader, no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.engine.engine import Engine
from app.engine.request import Admitted, Delta, Finished, GenerationRequest, SamplingParams
from app.models.registry import ModelSource, ModelSpec, Registry
from app.settings import Settings
from tests.engine_harness import MODEL_ID, collect, make_engine, no_eos, prompt_ids

PROMPTS = ["The quick brown fox", "Paris is the capital of",
           "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100", "Hello"]


async def test_batched_greedy_equals_each_prompt_alone(engine: Engine) -> None:
    def req(p: str) -> GenerationRequest:
        return GenerationRequest(MODEL_ID, prompt_ids(engine, p), 12,
                                 no_eos(engine, temperature=0.0))

    alone = [await collect(engine, req(p)) for p in PROMPTS]
    together = await asyncio.gather(*(collect(engine, req(p)) for p in PROMPTS))
    for a, b in zip(alone, together):
        assert len(a.tokens) == 12
        assert a.tokens == b.tokens
        assert a.finish and a.finish.reason == "length"


async def test_same_seed_same_output_different_seed_differs(engine: Engine) -> None:
    ids = prompt_ids(engine, "Hello, world!")

    async def run(seed: int) -> list[int]:
        params = no_eos(engine, temperature=1.0, seed=seed)
        return (await collect(engine, GenerationRequest(MODEL_ID, ids, 24, params))).tokens

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert first != other


async def test_concurrent_requests_all_complete(engine: Engine) -> None:
    lengths = [5, 17, 9, 30, 1, 12]
    reqs = [GenerationRequest(MODEL_ID, prompt_ids(engine, PROMPTS[i % 4] * (i + 1)), n,
                              no_eos(engine, temperature=0.8, seed=i))
            for i, n in enumerate(lengths)]
    results = await asyncio.gather(*(collect(engine, r) for r in reqs))
    for n, res in zip(lengths, results):
        assert res.error is None
        assert len(res.tokens) == n
        assert res.finish and res.finish.usage.completion_tokens == n


async def test_abort_mid_decode_leaves_others_running(engine: Engine) -> None:
    long_req = GenerationRequest(MODEL_ID, prompt_ids(engine, "Hello"), 1500,
                                 no_eos(engine, temperature=0.0))
    other = asyncio.ensure_future(collect(engine, GenerationRequest(
        MODEL_ID, prompt_ids(engine, "The quick"), 40, no_eos(engine, temperature=0.0))))
    stream = engine.submit(long_req)
    seen = 0
    async for ev in stream:
        if isinstance(ev, Delta):
            seen += len(ev.token_ids)
            if seen >= 3:
                engine.abort(long_req.id)
        elif isinstance(ev, Finished):
            assert ev.reason == "abort"
            assert ev.usage.completion_tokens < 1500
            break
    res = await other
    assert res.finish and res.finish.reason == "length" and len(res.tokens) == 40


async def test_abort_during_prefill(tiny_dir: Path) -> None:
    eng, spec = make_engine(tiny_dir, prefill_chunk=16)
    eng.start(asyncio.get_running_loop())
    try:
        await eng.chat_model(spec)
        ids = prompt_ids(eng, " ".join(PROMPTS) * 40)
        assert len(ids) > 1000
        req = GenerationRequest(MODEL_ID, ids, 10, SamplingParams(temperature=0.0))
        stream = eng.submit(req)
        await asyncio.sleep(0.05)
        eng.abort(req.id)
        assert isinstance(await asyncio.wait_for(stream.get(), 10), Admitted)
        ev = await asyncio.wait_for(stream.get(), 10)
        assert isinstance(ev, Finished) and ev.reason == "abort"
        assert ev.usage.completion_tokens == 0
    finally:
        eng.stop()


async def test_bad_request_fails_alone_and_engine_survives(engine: Engine) -> None:
    vocab = engine.loaded_chat(MODEL_ID).tokenizer.vocab_size  # type: ignore[union-attr]
    bad = GenerationRequest(MODEL_ID, [1, 2, vocab + 10_000], 5, SamplingParams(temperature=0))
    good = GenerationRequest(MODEL_ID, prompt_ids(engine, "Hello"), 5,
                             no_eos(engine, temperature=0.0))
    bad_res, good_res = await asyncio.gather(collect(engine, bad), collect(engine, good))
    assert good_res.finish is not None and len(good_res.tokens) == 5
    assert bad_res.error is not None and bad_res.error.status == 400
    again = await collect(engine, good)
    assert again.tokens == good_res.tokens


async def test_stop_string_ends_generation(engine: Engine) -> None:
    ids = prompt_ids(engine, "Hello")
    base = await collect(engine, GenerationRequest(MODEL_ID, ids, 20,
                                                   no_eos(engine, temperature=0)))
    assert len(base.text) > 4
    stop = base.text[2:4]
    res = await collect(engine, GenerationRequest(MODEL_ID, ids, 20,
                                                  no_eos(engine, temperature=0), stop=[stop]))
    assert res.finish and res.finish.reason == "stop"
    assert res.text == base.text[: base.text.find(stop)]
    assert stop not in res.text


async def test_idle_model_is_unloaded_and_reloaded_on_demand(tiny_dir: Path) -> None:
    spec = ModelSpec(MODEL_ID, "chat", ModelSource(path=str(tiny_dir)))
    other = ModelSpec("other", "chat", ModelSource(path=str(tiny_dir)))
    eng = Engine(Settings(eager_load=False, model_idle_ttl_seconds=0.2),
                 Registry([spec, other]))
    eng.start(asyncio.get_running_loop())
    try:
        handle = await eng.chat_model(other)
        req = GenerationRequest("other", handle.tokenizer.encode("Hello"), 3,
                                SamplingParams(temperature=0.0))
        first = await collect(eng, req)
        deadline = asyncio.get_running_loop().time() + 10
        while eng.loaded_chat("other") is not None:
            assert asyncio.get_running_loop().time() < deadline, "model was not unloaded"
            await asyncio.sleep(0.1)
        again = await collect(eng, GenerationRequest("other", req.prompt_tokens, 3,
                                                     SamplingParams(temperature=0.0)))
        assert again.tokens == first.tokens
    finally:
        eng.stop()
