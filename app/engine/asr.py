"""Transcription jobs on the engine thread, one 30 s window at a time.

Each engine loop iteration runs at most one window (round-robin over jobs) between
chat steps, so a transcription never holds chat streams up for more than one
window's compute.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from app.engine.request import Failed, TranscriptDone, TranscriptSegments, next_request_id
from app.engine.stream import RequestStream

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class AsrTask:
    job: Any
    """app.models.whisper.TranscriptionJob"""
    stream: RequestStream
    id: int = field(default_factory=next_request_id)
    aborted: bool = False


class AsrQueue:
    def __init__(self) -> None:
        self._tasks: deque[AsrTask] = deque()

    @property
    def has_work(self) -> bool:
        return bool(self._tasks)

    def add(self, task: AsrTask) -> None:
        self._tasks.append(task)

    def abort(self, task_id: int) -> bool:
        for task in self._tasks:
            if task.id == task_id:
                task.aborted = True
                return True
        return False

    def step(self) -> None:
        """Run one window of the job at the head of the queue, then rotate it to the back."""
        while self._tasks and self._tasks[0].aborted:
            dropped = self._tasks.popleft()
            logger.info("transcription %d aborted", dropped.id)
        if not self._tasks:
            return
        task = self._tasks.popleft()
        try:
            segments = task.job.step()
            if segments:
                task.stream.put_threadsafe(TranscriptSegments(segments))
            if task.job.done:
                task.stream.put_threadsafe(TranscriptDone(task.job.result()))
                return
        except Exception as exc:  # one bad file must not stop the engine or other jobs
            logger.exception("transcription %d failed", task.id)
            task.stream.put_threadsafe(Failed(f"transcription failed: {exc}"))
            return
        self._tasks.append(task)

    def abort_all(self, message: str) -> None:
        for task in self._tasks:
            task.stream.put_threadsafe(Failed(message, code="shutdown", status=503))
        self._tasks.clear()
