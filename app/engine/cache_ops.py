"""Every MLX operation on one chat model's KV caches, addressed by integer handles.

The runner decides (what to prefill, who decodes, who leaves); this class does the
array work: per-sequence caches, the shared left-padded batch cache, snapshots for the
KV store. Caches are named by handles rather than held as objects so that the same
sequence of operations can be replayed elsewhere: under tensor parallelism rank 0's
`Journal` (app/engine/tp/journal.py) records each call and every other rank replays it on
its shard of the weights and caches (app/engine/tp/follower.py). Every method whose
result feeds sampling is a forward; all others are bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from app.engine import forward
from app.kv.layers import Layers, prefix_of, snapshot_layers
from app.models.types import DecodeStep

BATCH = 0
"""Handle of the batch cache every running sequence decodes in."""
NO_ENTRY = -1


def identity(x: mx.array) -> mx.array:
    return x


class CacheOps:
    def __init__(self, model: Any, decode_step: DecodeStep | None,
                 layers_of: Callable[[int], Layers] | None = None,
                 share_tokens: Callable[[mx.array], mx.array] = identity) -> None:
        self.model = model
        self.decode_step = decode_step
        self._layers_of = layers_of or _no_store
        # Decode inputs pass through this before the forward: identity on one device;
        # under tensor parallelism rank 0's sampled tokens reach every rank this way
        # (a sum with the other ranks' zeros), inside the graph, so step t+1 can still be
        # launched before step t's tokens are read back.
        self._share_tokens = share_tokens
        self.project = True
        """Whether sampling forwards end in the vocabulary projection (only a rank that
        samples needs it)."""
        self.caches: dict[int, list[Any]] = {}
        self._next = BATCH + 1

    # -- what the runner calls -------------------------------------------------------
    def handle(self) -> int:
        h = self._next
        self._next += 1
        return h

    def run(self, name: str, *args: Any, **local: Any) -> Any:
        """Apply one operation. A journal records `name` and `args` first (tp/journal.py);
        `local` is what only this rank has (its sampled tokens) and is not recorded."""
        return getattr(self, "op_" + name)(*args, **local)

    def note(self, name: str, *args: Any) -> None:
        """An event of the KV store that other ranks must mirror (an entry kept or
        dropped); one device has nothing to do."""

    def check(self, exc: Exception) -> None:
        """Called with what a step raised before its requests are failed: under tensor
        parallelism a collective's failure becomes GroupLost (nothing on one device)."""

    def decode(self, tokens: mx.array) -> mx.array:
        return self.run("decode", int(tokens.shape[0]), tokens=tokens)

    def new(self, entry: int = NO_ENTRY, length: int = 0) -> int:
        """A fresh per-sequence cache, seeded with the first `length` positions of the
        store entry `entry` when one is given."""
        h = self.handle()
        self.run("new", h, entry, length)
        return h

    @property
    def batch_rows(self) -> int:
        batch = self.caches.get(BATCH)
        return 0 if not batch else int(batch[0].left_padding.shape[0])

    def has_batch(self) -> bool:
        return BATCH in self.caches

    def offset(self, h: int) -> int:
        return int(self.caches[h][0].offset)

    # -- operations (arguments are plain ints and lists: they travel in a journal) ----
    def op_new(self, h: int, entry: int, length: int) -> None:
        cache = make_prompt_cache(self.model)
        if entry != NO_ENTRY and length > 0:
            for c, (k, v) in zip(cache, prefix_of(self._layers_of(entry), length)):
                c.state = (k, v, length)
        self.caches[h] = cache

    def op_prefill(self, h: int, tokens: list[int], sample: bool) -> mx.array | None:
        """Prefill `tokens` into cache `h`; logits [1, V] of the last one when `sample`,
        else the cache updates are evaluated here (a middle chunk)."""
        cache = self.caches[h]
        fast = self.decode_step
        if fast is not None and self.project and fast.prefills(cache, len(tokens)):
            out = fast.prefill(np.asarray(tokens, dtype=np.int32), cache, sample)
            return None if out is None else mx.array(out)
        logits = forward.prefill(self.model, mx.array(tokens)[None], cache,
                                 mx.array([len(tokens) - 1]) if sample else None,
                                 self.project)
        if logits is None:
            mx.eval([c.state for c in cache])
        return logits

    def op_group(self, g: int, hs: list[int], rests: list[list[int]]) -> mx.array:
        """Finish several prompts in one forward into a new batch-shaped cache `g`: their
        cached prefixes merged left-padded, the remaining tokens right-padded, then the
        right padding rolled to the left (mlx-lm's BatchKVCache prepare/finalize).
        Returns logits [B, V] at each prompt's last token."""
        fast = self.decode_step
        if fast is not None and self.project and all(
                fast.prefills(self.caches[h], len(r)) for h, r in zip(hs, rests)):
            # one C call per prompt (no padding), then the caches merged left-padded
            rows = [fast.prefill(np.asarray(r, dtype=np.int32), self.caches[h], True)
                    for h, r in zip(hs, rests)]
            done = [self.caches.pop(h) for h in hs]
            self.caches[g] = [type(layer[0]).merge(list(layer)) for layer in zip(*done)]
            return mx.array(np.concatenate([r for r in rows if r is not None]))
        per_seq = [self.caches.pop(h) for h in hs]
        caches = [type(layer[0]).merge(list(layer)) for layer in zip(*per_seq)]
        width = max(len(r) for r in rests)
        pads = [width - len(r) for r in rests]
        for c in caches:
            c.prepare(right_padding=pads)
        tokens = mx.array([r + [0] * p for r, p in zip(rests, pads)])
        last = forward.prefill(self.model, tokens, caches, mx.array([len(r) - 1 for r in rests]),
                               self.project)
        assert last is not None
        for c in caches:
            c.finalize()
        self.caches[g] = caches
        return last

    def op_join(self, h: int) -> None:
        """Move per-sequence cache `h` into the batch."""
        self._extend([type(c).merge([c]) for c in self.caches.pop(h)])

    def op_extend_with(self, g: int) -> None:
        """Move batch-shaped cache `g` (a finished group) into the batch."""
        self._extend(self.caches.pop(g))

    def _extend(self, caches: list[Any]) -> None:
        batch = self.caches.get(BATCH)
        if batch is None:
            self.caches[BATCH] = caches
        else:
            for b, new in zip(batch, caches):
                b.extend(new)

    def op_extract(self, src: int, row: int, dst: int) -> None:
        self.caches[dst] = [c.extract(row) for c in self.caches[src]]

    def op_filter(self, src: int, keep: list[int]) -> None:
        if not keep:
            self.caches.pop(src, None)
            return
        for c in self.caches[src]:
            c.filter(keep)

    def op_free(self, h: int) -> None:
        self.caches.pop(h, None)

    def op_decode(self, rows: int, tokens: mx.array | None = None) -> mx.array:
        """Logits [B, V] of one decode step of the batch. `tokens` [B] are the inputs
        (lazy: the last step's samples); a rank that does not sample passes None."""
        batch = self.caches[BATCH]
        fast = self.decode_step
        if fast is not None and fast.supports(batch):
            assert tokens is not None
            # Computed here and now, so pipelining gains nothing from it; it is used only
            # where it is the faster path at every batch size (chosen at load, app/accel).
            return mx.array(fast.step(np.asarray(tokens), batch))
        if fast is not None:
            fast.release(batch)
        local = tokens if tokens is not None else mx.zeros((rows,), dtype=mx.int32)
        inputs = self._share_tokens(local.astype(mx.int32))
        return forward.decode(self.model, inputs[:, None], batch, self.project)

    def op_snapshot(self, h: int, length: int) -> Layers:
        """Compact copies of the first `length` positions of per-sequence cache `h`."""
        return snapshot_layers([(c.keys, c.values) for c in self.caches[h]], length)


def _no_store(entry: int) -> Layers:
    raise LookupError(f"no KV store holds entry {entry}")
