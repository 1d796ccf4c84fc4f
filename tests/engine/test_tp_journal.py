"""Tensor parallelism's journal, in one process: rank 0's runner records every KV cache
operation, and a Replica fed that record (as JSON, the way it travels) ends every step
with the same caches, batch and store entries. An operation that bypassed the journal
would leave the two apart; the ranks' collectives would then no longer meet."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from app.engine.engine import Engine
from app.engine.request import GenerationRequest
from app.engine.tp.channel import RankFigures
from app.engine.tp.follower import _replay
from app.engine.tp.journal import STOP, Journal, Replica, own_figures
from tests.engine_harness import MODEL_ID, collect, no_eos, prompt_ids


class LoopChannel:
    """Hands rank 0's record straight to an in-process Replica."""

    def __init__(self) -> None:
        self.tp = SimpleNamespace(all_sum=lambda x: x, rank=0, size=2, check=lambda exc: None)
        self.replica: Replica | None = None
        self.exchanges = 0

    def send(self, ops: list[list[Any]], mine: RankFigures) -> list[RankFigures]:
        assert self.replica is not None
        self.exchanges += 1
        for op in json.loads(json.dumps(ops)):
            if op[0] != STOP:
                _replay(self.replica, op)
        return [mine, own_figures(self.replica, self.replica.kv_bytes())]

    def figures(self, sent: list[RankFigures]) -> list[RankFigures]:
        return sent


def _journal(engine: Engine) -> tuple[Journal, Replica, LoopChannel]:
    runner = engine.models.runners[MODEL_ID]
    assert runner.kv is not None
    channel = LoopChannel()
    journal = Journal(runner.model, None, runner.kv.layers_of, channel)  # type: ignore[arg-type]
    channel.replica = Replica(runner.model, channel)  # type: ignore[arg-type]
    runner.ops = journal
    runner.kv.attach(journal)
    return journal, channel.replica, channel


def _state(engine: Engine, replica: Replica) -> tuple[Any, Any]:
    runner = engine.models.runners[MODEL_ID]
    assert isinstance(runner.ops, Journal) and runner.kv is not None
    runner.settle()
    runner.ops.flush(wait=True)
    store = runner.kv.store
    ours = ({h: runner.ops.offset(h) if h else runner.ops.batch_rows
             for h in runner.ops.caches},
            {eid: store.entry(eid).layers[0][0].shape for eid in store._entries})
    theirs = ({h: replica.offset(h) if h else replica.batch_rows for h in replica.caches},
              {eid: layers[0][0].shape for eid, layers in replica.entries.items()})
    return ours, theirs


async def test_a_replica_fed_the_journal_holds_the_same_caches(engine: Engine) -> None:
    runner = engine.models.runners[MODEL_ID]
    runner.loaded.decode_step = None
    journal, replica, channel = await engine.call(lambda: _journal(engine))
    system = prompt_ids(engine, "The quick brown fox jumps over the lazy dog. " * 5)
    greedy = no_eos(engine, temperature=0.0)
    await collect(engine, GenerationRequest(MODEL_ID, system, 4, greedy, session="a"))
    # batched, over a cached prefix, with a session, a long one and one cut short
    reqs = [GenerationRequest(MODEL_ID, system + prompt_ids(engine, t), n, greedy,
                              session=f"s{i}")
            for i, (t, n) in enumerate([("Paris", 6), ("Numbers: 1 2 3", 12), ("def", 3)])]
    reqs.append(GenerationRequest(MODEL_ID, prompt_ids(engine, "Long story " * 40), 2000,
                                  greedy))
    streams = [engine.submit(r) for r in reqs]
    done = await asyncio.gather(*(collect_stream(s) for s in streams[:3]))
    assert all(done)
    engine.abort(reqs[3].id)
    await collect_stream(streams[3])
    ours, theirs = await engine.call(lambda: _state(engine, replica))
    assert ours == theirs
    assert ours[1], "the store kept entries"
    assert not ours[0], "every cache was released"
    assert channel.exchanges > 10


async def collect_stream(stream: Any) -> bool:
    async for _ in stream:
        pass
    return True

