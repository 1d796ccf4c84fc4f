"""One collective per engine step: rank 0's plan goes down, every rank's figures come up.

A fixed int32 buffer is summed over the group. Rank 0 writes the plan's length and its
bytes; every rank writes its own figures into its slot; all other words are zero, so
the sum is the plan plus every rank's figures. A plan longer than the buffer (a long
prefill chunk's tokens) sends the rest in a second collective of the exact size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from app.engine.tp.errors import GroupLost
from app.engine.tp.group import TPGroup

PAYLOAD_WORDS = 2048
FIGURES = ("active_kib", "peak_kib", "cache_kib", "batch_rows", "caches", "kv_kib")
"""What each rank reports of itself (memory in KiB: int32 holds 2 TiB)."""


@dataclass(slots=True)
class RankFigures:
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


def _encode(ops: list[list[Any]]) -> bytes:
    return json.dumps(ops, separators=(",", ":")).encode()


class Channel:
    def __init__(self, tp: TPGroup) -> None:
        self.tp = tp
        self._head = 1 + tp.size * len(FIGURES)

    def exchange(self, ops: list[list[Any]] | None, mine: RankFigures
                 ) -> tuple[list[list[Any]], list[RankFigures]]:
        """Rank 0 passes its ops, the others None; everyone gets the ops and every
        rank's figures. Raises GroupLost when a rank is gone."""
        data = _encode(ops) if ops is not None else b""
        buf = np.zeros(self._head + PAYLOAD_WORDS, dtype=np.int32)
        first = data[: PAYLOAD_WORDS * 4]
        if ops is not None:
            buf[0] = len(data)
            padded = first + b"\0" * (-len(first) % 4)
            buf[self._head : self._head + len(padded) // 4] = np.frombuffer(padded, np.int32)
        slot = 1 + self.tp.rank * len(FIGURES)
        buf[slot : slot + len(FIGURES)] = mine.words()
        out = self._sum(buf)
        n = int(out[0])
        payload = out[self._head :].tobytes()[: min(n, PAYLOAD_WORDS * 4)]
        if n > PAYLOAD_WORDS * 4:
            rest_words = -(-(n - PAYLOAD_WORDS * 4) // 4)
            rest = np.zeros(rest_words, dtype=np.int32)
            if ops is not None:
                tail = data[PAYLOAD_WORDS * 4 :]
                tail += b"\0" * (-len(tail) % 4)
                rest[:] = np.frombuffer(tail, np.int32)
            payload += self._sum(rest).tobytes()[: n - PAYLOAD_WORDS * 4]
        figures = [RankFigures(*out[1 + r * len(FIGURES) : 1 + (r + 1) * len(FIGURES)].tolist())
                   for r in range(self.tp.size)]
        return (json.loads(payload) if n else []), figures

    def _sum(self, buf: np.ndarray) -> np.ndarray:
        try:
            out = self.tp.all_sum(mx.array(buf))
            mx.eval(out)
        except RuntimeError as exc:
            raise GroupLost(f"tensor-parallel group lost: {exc}") from exc
        return np.array(out)
