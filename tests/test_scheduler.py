from dataclasses import dataclass

from app.engine.scheduler import MIN_CHUNK, Scheduler


@dataclass(eq=False)
class FakeSeq:
    prefill_remaining: int


def test_idle_prefill_uses_full_chunk_and_no_decode() -> None:
    s = Scheduler(idle_chunk=512)
    s.add(FakeSeq(2000))
    plan = s.plan()
    assert plan.chunk == 512 and not plan.decode


def test_shortest_remaining_prompt_goes_first() -> None:
    s = Scheduler()
    long, short = FakeSeq(5000), FakeSeq(10)
    s.add(long)
    s.add(short)
    assert s.plan().prefill is short


def test_busy_chunk_follows_measured_rate() -> None:
    s = Scheduler(idle_chunk=512, busy_chunk_seconds=0.25)
    s.observe_prefill(200, 1.0)  # 200 tokens/s
    running = FakeSeq(0)
    s.running.append(running)
    s.add(FakeSeq(1000))
    plan = s.plan()
    assert plan.decode and plan.chunk == 50


def test_busy_chunk_has_floor_and_ceiling() -> None:
    s = Scheduler(idle_chunk=256, busy_chunk_seconds=0.25)
    s.observe_prefill(100, 10.0)
    assert s.busy_chunk() == MIN_CHUNK
    s2 = Scheduler(idle_chunk=256, busy_chunk_seconds=0.25)
    s2.observe_prefill(100_000, 1.0)
    assert s2.busy_chunk() == 256


def test_full_batch_defers_prefill_but_keeps_decoding() -> None:
    s = Scheduler(max_batch=2)
    s.running.extend([FakeSeq(0), FakeSeq(0)])
    s.add(FakeSeq(100))
    plan = s.plan()
    assert plan.prefill is None and plan.decode


def test_promote_and_remove() -> None:
    s = Scheduler()
    a = FakeSeq(5)
    s.add(a)
    s.promote(a)
    assert s.running == [a] and not s.waiting
    s.remove(a)
    assert not s.has_work and s.plan().idle
