from dataclasses import dataclass

from app.engine.scheduler import MIN_CHUNK, Scheduler


@dataclass(eq=False)
class FakeSeq:
    prefill_remaining: int


def test_idle_chunk_is_sized_by_time() -> None:
    s = Scheduler(idle_chunk=512, idle_chunk_seconds=1.0)
    s.add(FakeSeq(2000))
    first = s.plan()
    assert first.chunk == 128 and not first.decode  # unmeasured: a quarter, to measure
    s.observe_prefill(40, 1.0)  # a slow machine: 40 tokens/s
    assert s.plan().chunk == 40  # a new request waits about a second, not 12
    fast = Scheduler(idle_chunk=512, idle_chunk_seconds=1.0)
    fast.observe_prefill(5000, 1.0)
    fast.add(FakeSeq(2000))
    assert fast.plan().chunk == 512  # capped at idle_chunk


def test_shortest_remaining_prompt_goes_first() -> None:
    s = Scheduler()
    long, short = FakeSeq(5000), FakeSeq(10)
    s.add(long)
    s.add(short)
    assert s.plan().prefill[0] is short


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
    assert not plan.prefill and plan.decode


def test_promote_and_remove() -> None:
    s = Scheduler()
    a = FakeSeq(5)
    s.add(a)
    s.promote(a)
    assert s.running == [a] and not s.waiting
    s.remove(a)
    assert not s.has_work and not (s.plan().prefill or s.plan().decode)


def test_short_prompts_are_grouped_within_the_chunk_budget() -> None:
    s = Scheduler(idle_chunk=100, max_batch=8)
    s.observe_prefill(10_000, 1.0)  # fast: the chunk budget is idle_chunk itself
    seqs = [FakeSeq(n) for n in (30, 10, 20, 40, 500)]
    for q in seqs:
        s.add(q)
    plan = s.plan()
    # sorted 10, 20, 30 -> width 30 x 3 = 90 <= 100; adding 40 would make 160
    assert plan.prefill == [seqs[1], seqs[2], seqs[0]] and plan.chunk == 30


def test_group_respects_free_batch_slots() -> None:
    s = Scheduler(idle_chunk=1000, max_batch=3)
    s.running.append(FakeSeq(0))
    for n in (5, 6, 7):
        s.add(FakeSeq(n))
    assert len(s.plan().prefill) == 2


def test_a_short_tail_goes_with_the_chunk_before_it() -> None:
    s = Scheduler(idle_chunk=512, idle_chunk_seconds=1.0)
    s.observe_prefill(5000, 1.0)
    seq = FakeSeq(521)  # 512 would leave 9: one forward for 9 tokens
    s.add(seq)
    assert s.plan().chunk == 521
    seq.prefill_remaining = 512 + 64  # 64 = 512 / 8 left behind: a chunk of its own
    assert s.plan().chunk == 512
