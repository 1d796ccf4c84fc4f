"""AsrQueue's turns with fake jobs: every turn is one bounded slice, round-robin, and an
aborted job never gets another."""

from __future__ import annotations

from typing import Any

from app.engine.asr import SLICE_SECONDS, AsrQueue, AsrTask
from app.engine.request import Admitted, TranscriptDone


class FakeJob:
    def __init__(self, name: str, slices: int, log: list[tuple[str, float | None]]) -> None:
        self.name, self.left, self.log = name, slices, log

    @property
    def done(self) -> bool:
        return self.left == 0

    def step(self, budget_s: float | None = None) -> list[Any]:
        self.log.append((self.name, budget_s))
        self.left -= 1
        return []

    def result(self) -> str:
        return self.name


class FakeStream:
    def __init__(self) -> None:
        self.events: list[object] = []

    def put_threadsafe(self, event: object) -> None:
        self.events.append(event)


def _task(name: str, slices: int, log: list[tuple[str, float | None]]) -> AsrTask:
    return AsrTask(FakeJob(name, slices, log), FakeStream())  # type: ignore[arg-type]


def test_every_turn_is_one_slice_with_or_without_chat() -> None:
    log: list[tuple[str, float | None]] = []
    queue = AsrQueue()
    a, b = _task("a", 3, log), _task("b", 2, log)
    queue.add(a)
    queue.add(b)
    queue.step(chat_waiting=False)  # nothing else running: still one slice, not a window
    queue.step(chat_waiting=True)
    while queue.has_work:
        queue.step()
    assert log == [("a", SLICE_SECONDS), ("b", SLICE_SECONDS), ("a", SLICE_SECONDS),
                   ("b", SLICE_SECONDS), ("a", SLICE_SECONDS)]
    for task in (a, b):
        events = task.stream.events  # type: ignore[attr-defined]
        assert isinstance(events[0], Admitted) and isinstance(events[-1], TranscriptDone)


def test_an_aborted_job_gets_no_further_slice() -> None:
    log: list[tuple[str, float | None]] = []
    queue = AsrQueue()
    tasks = [_task(name, 5, log) for name in "abc"]
    for task in tasks:
        queue.add(task)
    queue.step()  # a
    assert queue.abort(tasks[2].id)  # c: queued behind b, not at the head
    assert queue.abort(tasks[0].id)  # a: just rotated to the back
    assert not queue.abort(tasks[0].id)
    queue.step()
    queue.step()
    assert [name for name, _ in log] == ["a", "b", "b"]
    assert queue.abort(tasks[1].id) and not queue.has_work
