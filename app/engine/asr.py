"""Transcription jobs on the engine thread, taking turns with chat steps.

Each engine loop iteration gives the job at the head of the queue (round-robin) one
slice of about SLICE_SECONDS (it stops after the half encoder layer or decoder step
that crosses the time), so chat and speech share the engine about evenly. Slices stay
that short with no chat running too: a chat request arriving then is admitted at the
next loop turn, not after the rest of a window (seconds; tens of seconds on noise).
A transcription never holds chat up for more than SLICE_SECONDS plus one such unit
(~0.08 s for tiny.en on a 2-core CPU), and an aborted one never runs another slice.
"""

from __future__ import annotations

import logging
import time
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
from app.metrics import Metrics
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
    model: str = ""
    """The model's id (a metrics label)."""
    queued_at: float = field(default_factory=time.perf_counter)


class AsrQueue:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._tasks: deque[AsrTask] = deque()
        self.metrics = metrics

    @property
    def has_work(self) -> bool:
        return bool(self._tasks)

    @property
    def pending(self) -> int:
        """Tasks queued or in progress."""
        return len(self._tasks)

    def add(self, task: AsrTask) -> None:
        self._tasks.append(task)
        task.stream.put_threadsafe(Admitted())

    def abort(self, task_id: int) -> bool:
        """Drop the task now (its client went away): wherever it is in the queue, it runs
        no further slice, and its audio and spectrogram are freed."""
        for task in self._tasks:
            if task.id == task_id:
                task.aborted = True
                self._tasks.remove(task)
                logger.info("transcription %d aborted", task.id)
                return True
        return False

    def step(self, chat_waiting: bool = False) -> None:
        """Run one slice of the job at the head of the queue, then rotate it to the back.
        `chat_waiting` (the engine loop's) does not lengthen the slice: chat may arrive
        at any moment."""
        if not self._tasks:
            return
        task = self._tasks.popleft()
        try:
            segments = task.job.step(SLICE_SECONDS)
            if segments:
                task.stream.put_threadsafe(TranscriptSegments(segments))
            if task.job.done:
                task.stream.put_threadsafe(TranscriptDone(task.job.result()))
                if self.metrics is not None:
                    self.metrics.transcribed(task.model, task.job.duration,
                                             time.perf_counter() - task.queued_at)
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
