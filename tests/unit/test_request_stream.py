"""RequestStream on the event loop: merged deltas, keepalive timeouts, the final event."""

from __future__ import annotations

import asyncio

from app.engine.request import Delta, Failed, Finished, Usage
from app.engine.stream import Dispatcher, RequestStream

TICK = 0.02


def _stream() -> RequestStream:
    return RequestStream(Dispatcher(asyncio.get_running_loop()))


async def test_timeout_only_after_a_whole_quiet_keepalive() -> None:
    stream = _stream()
    assert await stream.get(timeout=TICK) is None  # nothing came

    async def feed() -> None:
        for i in range(8):  # a token every TICK: never a quiet keepalive of 5 TICKs
            await asyncio.sleep(TICK)
            stream._put(Delta(str(i)))
        await asyncio.sleep(12 * TICK)  # quiet for more than two keepalives
        stream._put(Finished("stop", Usage(1, 8)))

    feeder = asyncio.create_task(feed())
    got: list[str | None] = []
    while True:
        event = await stream.get(timeout=5 * TICK)
        got.append(None if event is None else type(event).__name__)
        if isinstance(event, Finished):
            break
    await feeder
    assert got[0] == "Delta" and got[-1] == "Finished"
    assert 1 <= got.count(None) <= 4  # the quiet stretch, not the tokens
    assert stream.closed and stream._timer is None


async def test_deltas_merge_while_the_consumer_is_away() -> None:
    stream = _stream()
    for i in range(3):
        stream._put(Delta(str(i), [i]))
    stream._put(Finished("length", Usage(1, 3)))
    first = await stream.get()
    assert isinstance(first, Delta) and first.text == "012" and first.token_ids == [0, 1, 2]
    assert isinstance(await stream.get(), Finished)
    stream._put(Delta("late"))  # after the final event: dropped
    assert not stream._events


async def test_no_timeout_without_one() -> None:
    stream = _stream()
    asyncio.get_running_loop().call_later(5 * TICK, stream._put, Delta("x"))
    event = await stream.get()
    assert isinstance(event, Delta) and event.text == "x"


async def test_end_open_ends_streams_the_engine_has_not() -> None:
    """The fallback when the engine thread is stuck: every tracked stream without its
    final event gets one from the loop; what the engine posts afterwards is dropped."""
    dispatcher = Dispatcher(asyncio.get_running_loop())
    done, stuck = RequestStream(dispatcher), RequestStream(dispatcher)
    done._put(Finished("stop", Usage(1, 1)))
    assert dispatcher.end_open(Failed("gone", status=503)) == 1
    stuck.put_threadsafe(Delta("late"))  # the engine thread wakes up after all
    dispatcher.flush()
    await asyncio.sleep(0)
    assert [type(e).__name__ async for e in stuck] == ["Failed"]
    assert [type(e).__name__ async for e in done] == ["Finished"]
