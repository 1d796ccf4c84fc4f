"""One collective per forward: rank 0's plan goes down, every rank's figures come up.

A fixed int32 buffer is summed over the group. Rank 0 writes the plan's length and its
bytes; every rank writes its own figures into its slot; all other words are zero, so
the sum is the plan plus every rank's figures. A plan longer than the buffer (a long
prefill chunk's tokens) sends the rest in a second collective of the exact size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from app.engine.tp.group import TPGroup

PAYLOAD_WORDS = 2048


@dataclass(slots=True)
class RankFigures:
    """What each rank reports of itself (memory in KiB: int32 holds 2 TiB)."""

    active_kib: int = 0
    peak_kib: int = 0
    cache_kib: int = 0
    batch_rows: int = 0
    caches: int = 0
    """Per-sequence and batch caches this rank holds."""
    kv_kib: int = 0
    """KiB of the KV store entries this rank holds (its shard of them)."""

    def words(self) -> list[int]:
        return [int(getattr(self, f)) for f in FIGURES]


FIGURES = tuple(f.name for f in dataclasses.fields(RankFigures))


def _encode(ops: list[list[Any]]) -> bytes:
    return json.dumps(ops, separators=(",", ":")).encode()


def _words(data: bytes) -> np.ndarray:
    """`data` zero-padded to whole int32 words."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), np.int32)


class Channel:
    def __init__(self, tp: TPGroup) -> None:
        self.tp = tp
        self._head = 1 + tp.size * len(FIGURES)

    def send(self, ops: list[list[Any]], mine: RankFigures) -> mx.array:
        """Rank 0: start the collective and return without waiting for it (its result is
        queued behind the forward in flight, before the next one: the order every rank
        sees). `figures()` of the returned array waits."""
        data = _encode(ops)
        out = self.tp.all_sum(mx.array(self._buffer(data, mine)))
        if len(data) > PAYLOAD_WORDS * 4:
            rest = self.tp.all_sum(mx.array(_words(data[PAYLOAD_WORDS * 4 :])))
            mx.async_eval(out, rest)
        else:
            mx.async_eval(out)
        return out

    def figures(self, out: mx.array) -> list[RankFigures]:
        """Every rank's figures from a sent exchange; raises GroupLost."""
        return self._figures(self._read(out))

    def receive(self, mine: RankFigures) -> list[list[Any]]:
        """Ranks > 0: wait for rank 0's next operations (sending this rank's figures)."""
        out = self._read(self.tp.all_sum(mx.array(self._buffer(b"", mine))))
        n = int(out[0])
        payload = out[self._head :].tobytes()[: min(n, PAYLOAD_WORDS * 4)]
        if n > PAYLOAD_WORDS * 4:
            rest = self._read(self.tp.all_sum(mx.zeros((-(-(n - PAYLOAD_WORDS * 4) // 4),),
                                                        dtype=mx.int32)))
            payload += rest.tobytes()[: n - PAYLOAD_WORDS * 4]
        return json.loads(payload) if n else []

    def _buffer(self, data: bytes, mine: RankFigures) -> np.ndarray:
        buf = np.zeros(self._head + PAYLOAD_WORDS, dtype=np.int32)
        if data:
            first = _words(data[: PAYLOAD_WORDS * 4])
            buf[0] = len(data)
            buf[self._head : self._head + len(first)] = first
        slot = 1 + self.tp.rank * len(FIGURES)
        buf[slot : slot + len(FIGURES)] = mine.words()
        return buf

    def _figures(self, out: np.ndarray) -> list[RankFigures]:
        k = len(FIGURES)
        return [RankFigures(*out[1 + r * k : 1 + (r + 1) * k].tolist())
                for r in range(self.tp.size)]

    def _read(self, out: mx.array) -> np.ndarray:
        try:
            mx.eval(out)
        except RuntimeError as exc:
            raise self.tp.failed(exc) from exc
        return np.array(out)
