"""Embedding batches on the engine thread, taking turns with chat steps.

Requests queue their token lists; each engine loop iteration embeds one batch drawn
from every waiting request of the head request's model (requests share a forward), rows
sorted by length so little of a batch is padding. While chat streams are running a batch
holds about one chat step's worth of tokens; otherwise a larger one.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.models.bert import LoadedEmbeddingModel
from app.models.bert.pooling import pool

logger = logging.getLogger(__name__)

# Padded tokens in one forward: small while chat waits (a batch then costs about one chat
# decode step), larger when the engine is otherwise idle (fewer, fuller matmuls).
BUSY_BATCH_TOKENS = 512
IDLE_BATCH_TOKENS = 8192
MAX_BATCH_ROWS = 256


@dataclass(slots=True, eq=False)
class EmbedTask:
    model: LoadedEmbeddingModel
    inputs: list[list[int]]
    future: Future[np.ndarray]
    """Resolves to float32 [len(inputs), dimensions]; cancelling it drops the task."""
    _out: np.ndarray | None = None
    _pending: list[int] = field(default_factory=list)
    _left: int = 0

    def __post_init__(self) -> None:
        self._out = np.zeros((len(self.inputs), self.model.dimensions), np.float32)
        self._pending = list(range(len(self.inputs)))
        self._left = len(self.inputs)


class EmbedQueue:
    def __init__(self) -> None:
        self._tasks: deque[EmbedTask] = deque()

    @property
    def has_work(self) -> bool:
        return bool(self._tasks)

    @property
    def pending(self) -> int:
        """Tasks queued or in progress."""
        return len(self._tasks)

    def add(self, task: EmbedTask) -> None:
        self._tasks.append(task)

    def step(self, chat_waiting: bool = False) -> None:
        """Embed one batch of rows from the waiting requests of the head one's model."""
        while self._tasks and self._tasks[0].future.cancelled():
            self._tasks.popleft()
        if not self._tasks:
            return
        model = self._tasks[0].model
        budget = BUSY_BATCH_TOKENS if chat_waiting else IDLE_BATCH_TOKENS
        rows = self._take(model, budget)
        try:
            vectors = embed_rows(model, [t.inputs[i] for t, i in rows])
        except Exception as exc:  # one bad batch must not stop the engine
            logger.exception("embedding batch failed")
            for task in {id(t): t for t, _ in rows}.values():
                self._finish(task, exc)
            return
        for (task, i), vec in zip(rows, vectors):
            assert task._out is not None
            task._out[i] = vec
            task._left -= 1
            if task._left == 0:
                self._finish(task, None)

    def _take(self, model: LoadedEmbeddingModel, budget: int) -> list[tuple[EmbedTask, int]]:
        """Rows for one forward, in arrival order, while rows x longest fits the budget
        (always at least one row)."""
        rows: list[tuple[EmbedTask, int]] = []
        longest = 0
        for task in self._tasks:
            if task.model is not model or task.future.cancelled():
                continue
            while task._pending:
                i = task._pending[0]
                n = max(longest, len(task.inputs[i]))
                if rows and (n * (len(rows) + 1) > budget or len(rows) >= MAX_BATCH_ROWS):
                    return rows
                rows.append((task, task._pending.pop(0)))
                longest = n
        return rows

    def _finish(self, task: EmbedTask, exc: Exception | None) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if task.future.cancelled():
            return
        if exc is not None:
            task.future.set_exception(exc)
        else:
            assert task._out is not None
            task.future.set_result(task._out)

    def abort_all(self, exc: Exception) -> None:
        for task in self._tasks:
            if not task.future.cancelled():
                task.future.set_exception(exc)
        self._tasks.clear()


def embed_rows(model: LoadedEmbeddingModel, rows: list[list[int]]) -> np.ndarray:
    """Sentence vectors [len(rows), D] of token lists, batched by length (padding stays
    within each length group)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros((len(rows), model.dimensions), np.float32)
    start = 0
    while start < len(order):
        # A group ends where padding to its longest row would waste over a quarter.
        end = start + 1
        while end < len(order) and len(rows[order[start]]) * 4 >= len(rows[order[end]]) * 3:
            end += 1
        group = order[start:end]
        width = len(rows[group[-1]])
        ids = np.zeros((len(group), width), np.int32)
        for r, i in enumerate(group):
            ids[r, :len(rows[i])] = rows[i]
        lengths = np.array([len(rows[i]) for i in group])
        hidden = model.forward(ids, lengths)
        out[group] = pool(hidden, lengths, model.pooling, model.normalize)
        start = end
    return out
