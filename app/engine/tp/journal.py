"""Rank 0's CacheOps under tensor parallelism: every operation is recorded, and the
record reaches the other ranks in one collective before each forward (and on an idle
heartbeat), so they replay it on their shards in the same order (follower.py).

Scheduling, sampling, stop strings and the KV store's decisions stay on rank 0; what
travels is only their outcome in cache operations: prefill these tokens into cache h,
merge, extend, extract row i, filter, keep a snapshot as entry e, forget entry e,
decode a step (its input tokens travel inside the graph, see CacheOps._share_tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from app.engine.cache_ops import CacheOps
from app.engine.tp.channel import Channel, RankFigures
from app.kv.layers import Layers
from app.kv.sizing import kv_nbytes
from app.models.types import DecodeStep

FORWARDS = frozenset({"prefill", "group", "decode"})
HEARTBEAT_SECONDS = 0.5
"""An idle rank 0 still exchanges this often: a rank that died is noticed while idle."""
STOP = "stop"


def own_figures(ops: CacheOps, kv_bytes: int) -> RankFigures:
    return RankFigures(
        active_kib=mx.get_active_memory() >> 10, peak_kib=mx.get_peak_memory() >> 10,
        cache_kib=mx.get_cache_memory() >> 10, batch_rows=ops.batch_rows,
        caches=len(ops.caches), kv_kib=kv_bytes >> 10)


class Journal(CacheOps):
    def __init__(self, model: Any, decode_step: DecodeStep | None,
                 layers_of: Callable[[int], Layers] | None, channel: Channel,
                 kv_bytes: Callable[[], int] = lambda: 0) -> None:
        super().__init__(model, None, layers_of, channel.tp.all_sum)
        if decode_step is not None:
            raise ValueError("an injected decode step cannot run under tensor parallelism")
        self.channel = channel
        self._pending: list[list[Any]] = []
        self._last = time.monotonic()
        self.ranks: list[RankFigures] = []
        """Every rank's figures, as of the last exchange (index = rank)."""
        self._kv_bytes = kv_bytes
        """This rank's bytes in the KV store, now."""

    def run(self, name: str, *args: Any, **local: Any) -> Any:
        self._pending.append([name, *args])
        if name in FORWARDS:
            self.flush()
        return super().run(name, *args, **local)

    def note(self, name: str, *args: Any) -> None:
        self._pending.append([name, *args])

    def check(self, exc: Exception) -> None:
        self.channel.tp.check(exc)

    def flush(self, wait: bool = False) -> None:
        """Send the recorded operations (one collective) without waiting for it, unless
        `wait`: then every rank's figures are read, and a lost rank raises GroupLost."""
        ops, self._pending = self._pending, []
        sent = self.channel.send(ops, own_figures(self, self._kv_bytes()))
        if wait:
            self.ranks = self.channel.figures(sent)
            self._last = time.monotonic()

    def heartbeat(self) -> None:
        """Once per engine loop turn: a waited exchange every HEARTBEAT_SECONDS (busy or
        not: the figures stay fresh and a dead rank is noticed), else pending operations
        go out without waiting."""
        if time.monotonic() - self._last >= HEARTBEAT_SECONDS:
            self.flush(wait=True)
        elif self._pending:
            self.flush()

    def stop(self) -> None:
        self._pending.append([STOP])
        self.flush(wait=True)


class Replica(CacheOps):
    """A rank other than 0: holds its shards of the caches and of the store's entries."""

    def __init__(self, model: Any, channel: Channel) -> None:
        super().__init__(model, None, self._entry, channel.tp.all_sum)
        self.project = False  # rank 0 samples; the layers' collectives are all this needs
        self.channel = channel
        self.entries: dict[int, Layers] = {}
        self._snapshot: Layers | None = None

    def _entry(self, entry: int) -> Layers:
        return self.entries[entry]

    def op_snapshot(self, h: int, length: int) -> Layers:
        self._snapshot = super().op_snapshot(h, length)
        return self._snapshot

    def op_keep(self, entry: int) -> None:
        assert self._snapshot is not None, "keep without a snapshot"
        self.entries[entry] = self._snapshot

    def op_forget(self, entry: int) -> None:
        self.entries.pop(entry, None)

    def op_settle(self) -> None:
        self._snapshot = None

    def kv_bytes(self) -> int:
        return sum(kv_nbytes(layers) for layers in self.entries.values())
