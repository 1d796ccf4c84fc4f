"""Connects running sequences to the resident KV store (engine thread only).

Admission reserves KV bytes for prompt + max_tokens and looks up the longest cached
prefix; the sequence's cache is seeded with that prefix when it is queued; when it
leaves (finished, cut by length or aborted) its KV goes back into the store. The
arrays are the runner's CacheOps'; the store keeps only this rank's.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from app.engine.cache_ops import CacheOps
from app.engine.sequence import Sequence
from app.kv.layers import Layers
from app.kv.records import Lookup
from app.kv.store import KVStore

logger = logging.getLogger(__name__)


def measure_kv_bytes_per_token(model: Any) -> int:
    """KV bytes one token adds, measured with a 1-token forward (works for any mlx-lm model)."""
    cache = make_prompt_cache(model)
    model(mx.array([[0]]), cache=cache)
    total = 0
    for c in cache:
        keys, values = getattr(c, "keys", None), getattr(c, "values", None)
        if keys is not None and values is not None:
            total += keys[..., :1, :].nbytes + values[..., :1, :].nbytes
    return total


class AdmissionRefused(Exception):
    """The KV budget cannot hold this request now (503 + Retry-After)."""


class RequestTooLarge(Exception):
    """The KV budget could never hold this request (a 400: waiting will not help)."""


class KVBridge:
    def __init__(self, store: KVStore, bytes_per_token: int) -> None:
        self.store = store
        self.bytes_per_token = bytes_per_token
        self.ops: CacheOps | None = None

    def attach(self, ops: CacheOps) -> None:
        """Use `ops` for the arrays; the store's keeps and drops are noted to it (other
        ranks mirror them under tensor parallelism)."""
        self.ops = ops
        self.store.observe(on_add=lambda e: ops.note("keep", e.id),
                           on_remove=lambda e: ops.note("forget", e.id))

    def layers_of(self, entry_id: int) -> Layers:
        return self.store.entry(entry_id).layers

    def admit(self, seq: Sequence) -> None:
        need = self.bytes_per_token * (len(seq.prompt) + seq.req.max_tokens)
        if need > self.store.budget_bytes:
            raise RequestTooLarge(
                f"this request needs {need / 2**20:.1f} MiB of KV cache ({len(seq.prompt)} "
                f"prompt tokens + max_tokens {seq.req.max_tokens}), more than the whole "
                f"budget of {self.store.budget_bytes / 2**20:.1f} MiB: lower max_tokens or "
                "shorten the prompt")
        if not self.store.reserve(need):
            raise AdmissionRefused(
                f"KV cache budget exhausted: this request needs {need / 2**20:.1f} MiB, "
                f"budget {self.store.budget_bytes / 2**20:.1f} MiB "
                f"({self.store.reserved_bytes / 2**20:.1f} MiB held by running requests)")
        seq.reserved_bytes = need
        lk = self.store.lookup(seq.prompt, seq.req.session, seq.req.cache_namespace)
        # At least one prompt token must be computed to get next-token logits.
        n = min(lk.matched, len(seq.prompt) - 1)
        if lk.entry is not None and n > 0:
            self.store.pin(lk.entry)
            seq.cache_entry, seq.cached_tokens = lk.entry, n
            seq.prefilled = n  # the scheduler sees only the uncached rest as prefill work
        seq.cache_info = describe(lk, n)

    def started(self, seq: Sequence) -> None:
        """The sequence's first prefill chunk runs: its cache (seeded when it was queued)
        no longer needs the entry pinned."""
        if seq.cache_entry is not None:
            self.store.unpin(seq.cache_entry)
            seq.cache_entry = None

    def release(self, seq: Sequence, cache: int | None) -> None:
        if seq.cache_entry is not None:
            self.store.unpin(seq.cache_entry)
            seq.cache_entry = None
        if seq.reserved_bytes:
            self.store.release(seq.reserved_bytes)
            seq.reserved_bytes = 0
        if cache is None or self.ops is None:
            return
        length = self.ops.offset(cache)  # a per-sequence cache (prefill or extracted row)
        if length <= 0:
            return
        tokens = (seq.prompt + seq.generated)[:length]
        layers = self.ops.run("snapshot", cache, length)
        self.store.put(tokens, layers, seq.req.session, seq.req.cache_namespace)
        self.ops.note("settle")  # the snapshot is kept by now, or was not wanted


def describe(lk: Lookup, used: int) -> str:
    """Header text: how much was reused and, on a miss or partial match, why."""
    if used > 0 and lk.reason == "hit":
        return f"hit; reused={used}"
    if used > 0:  # e.g. the reply re-tokenized differently: most of the prefix still reused
        return f"partial; reason={lk.reason}; reused={used}"
    return f"miss; reason={lk.reason}; reused={used}"
