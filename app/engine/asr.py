"""Transcription jobs on the engine thread, taking turns with chat steps.

Each engine loop iteration gives the job at the head of the queue (round-robin) one
slice: while chat streams are running, about SLICE_SECONDS of its window (it stops
after the encoder pass or a decoder step once the time is up), so chat and speech share
the engine about evenly; with no chat running, the rest of its window in one go.
A transcription never holds chat streams up for more than one encoder pass or
SLICE_SECONDS of decoding.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from app.engine.request import (
    Admitted,
    Failed,
    TranscriptDone,
    TranscriptSegments,
    next_request_id,
)
from app.engine.stream import RequestStream
from app.models.whisper.transcribe import TranscriptionJob

logger = logging.getLogger(__name__)

# About one batched chat decode step on the CPU (~40 ms for SmolLM2): equal turns.
SLICE_SECONDS = 0.05


@dataclass(slots=True, eq=False)
class AsrTask:
    job: TranscriptionJob
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
        task.stream.put_threadsafe(Admitted())

    def abort(self, task_id: int) -> bool:
        for task in self._tasks:
            if task.id == task_id:
                task.aborted = True
                return True
        return False

    def step(self, chat_waiting: bool = False) -> None:
        """Run one slice of the job at the head of the queue (a whole window unless chat
        streams are waiting), then rotate it to the back."""
        while self._tasks and self._tasks[0].aborted:
            dropped = self._tasks.popleft()
            logger.info("transcription %d aborted", dropped.id)
        if not self._tasks:
            return
        task = self._tasks.popleft()
        try:
            segments = task.job.step(SLICE_SECONDS if chat_waiting else None)
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
