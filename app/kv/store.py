"""Resident KV caches under a byte budget: prefix reuse, sessions, LRU eviction.

Lives on the engine thread (the only one touching MLX), so nothing here locks. An
entry is the exact KV of one token sequence (prompt + completion). Named sessions own
their entry; anonymous entries are shared by longest-prefix match, so a system prompt
common to many sessions is reused. Eviction takes anonymous entries first (cheap to
lose), then named ones, which spill to the disk tier (disk_tier.py) and come back on
their next request.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from app.kv import persist
from app.kv.disk_tier import DiskTier
from app.kv.layers import SEQ_AXIS, Layers
from app.kv.radix import RadixTree, common_prefix_len
from app.kv.records import KVEntry, Lookup, SessionInfo, StoreStats
from app.kv.sizing import kv_nbytes

logger = logging.getLogger(__name__)

REASON_HIT = "hit"
REASON_NO_ENTRY = "no-entry"
REASON_EVICTED = "evicted"
REASON_OTHER_MODEL = "other-model"
SOURCE_SESSION = "session"
SOURCE_PREFIX = "prefix"


def diverged_reason(at: int) -> str:
    return f"diverged at {at}"


class KVStore:
    def __init__(self, budget_bytes: int, fingerprint: str, persist_dir: Path | None) -> None:
        self.budget_bytes = budget_bytes
        self.fingerprint = fingerprint
        self.persist_dir = persist_dir
        self._entries: dict[int, KVEntry] = {}
        # One prefix tree per cache namespace: a tenant's prompts never match another's.
        self._radix: dict[str, RadixTree] = {}
        # Two LRU lists (oldest first) so eviction drains anonymous before named.
        self._lru_anon: OrderedDict[int, None] = OrderedDict()
        self._lru_named: OrderedDict[int, None] = OrderedDict()
        self._by_session: dict[str, int] = {}
        self._disk = DiskTier(persist_dir, fingerprint)
        self._bytes = 0
        self._reserved = 0
        self._next_id = 0
        self._stats = StoreStats()
        self._on_add: Callable[[KVEntry], None] | None = None
        self._on_remove: Callable[[KVEntry], None] | None = None

    def observe(self, on_add: Callable[[KVEntry], None],
                on_remove: Callable[[KVEntry], None]) -> None:
        """Be told of every entry kept and dropped (ranks that hold shards mirror them)."""
        self._on_add, self._on_remove = on_add, on_remove

    # -- queries -----------------------------------------------------------------

    def entry(self, entry_id: int) -> KVEntry:
        return self._entries[entry_id]

    @property
    def total_bytes(self) -> int:
        return self._bytes

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    @property
    def pinned_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values() if e.pins > 0)

    @property
    def stats(self) -> StoreStats:
        return dataclasses.replace(
            self._stats,
            entries=len(self._entries),
            resident_bytes=self._bytes,
            reserved_bytes=self._reserved,
            pinned_bytes=self.pinned_bytes,
            budget_bytes=self.budget_bytes,
            disk_sessions=len(self._disk.headers),
        )

    def lookup(self, tokens: Sequence[int], session: str | None = None,
               namespace: str = "") -> Lookup:
        """Best cached KV for `tokens`: the session's own entry, else the longest prefix
        among the entries of `namespace`."""
        query = tuple(tokens)
        self._stats.lookups += 1
        own, own_reason = (self._session_entry(session, namespace) if session is not None
                           else (None, None))
        own_matched = common_prefix_len(own.tokens, query) if own is not None else 0
        best_id, best_matched = self._tree(namespace).longest_match(query)

        entry: KVEntry | None = None
        matched, source = 0, None
        if own is not None and own_matched > 0 and own_matched >= best_matched:
            entry, matched, source = own, own_matched, SOURCE_SESSION
        elif best_id is not None:
            entry, matched, source = self._entries[best_id], best_matched, SOURCE_PREFIX

        if entry is None:
            self._stats.misses += 1
            reason = own_reason or (diverged_reason(0) if own is not None else REASON_NO_ENTRY)
            return Lookup(None, 0, reason)
        self._touch(entry)
        self._stats.cached_tokens += matched
        full = matched == len(entry.tokens) or matched == len(query)
        if full:
            self._stats.hits += 1
        else:
            self._stats.partial_hits += 1
        if own_reason is not None:
            reason = own_reason  # served by the global fallback; say why not the session
        elif source == SOURCE_PREFIX and own is not None:
            reason = diverged_reason(own_matched)
        else:
            reason = REASON_HIT if full else diverged_reason(matched)
        return Lookup(entry, matched, reason, source)

    def sessions(self) -> list[SessionInfo]:
        """Every named session, resident or on disk, most recently used first."""
        out: list[SessionInfo] = []
        for key, eid in self._by_session.items():
            e = self._entries[eid]
            out.append(
                SessionInfo(key, len(e.tokens), e.nbytes, True, e.persisted, e.last_used)
            )
        for key, h in self._disk.headers.items():
            if key not in self._by_session:
                out.append(
                    SessionInfo(
                        key, h.n_tokens, h.nbytes, False, True, h.mtime,
                        other_model=h.fingerprint != self.fingerprint,
                    )
                )
        out.sort(key=lambda s: s.last_used, reverse=True)
        return out

    # -- updates -----------------------------------------------------------------

    def put(self, tokens: Sequence[int], layers: Layers, session: str | None = None,
            namespace: str = "") -> bool:
        """Keep the KV of `tokens` (prompt + completion). True if it is now resident.

        Call release() for the request's reservation first, so its bytes count here.
        """
        seq = tuple(tokens)
        if not seq:
            return False
        for k, v in layers:
            if k.shape[SEQ_AXIS] != len(seq) or v.shape[SEQ_AXIS] != len(seq):
                raise ValueError(
                    f"KV holds {k.shape[SEQ_AXIS]} positions for {len(seq)} tokens"
                )
        self._stats.puts += 1
        nbytes = kv_nbytes(layers)
        if nbytes > self.budget_bytes:
            self._stats.rejected += 1
            logger.info("KV entry of %d bytes exceeds the whole budget; not stored", nbytes)
            return False
        tree = self._tree(namespace)
        if session is None:
            covering, matched = tree.longest_match(seq)
            if covering is not None and matched == len(seq):
                self._touch(self._entries[covering])  # already cached inside a longer one
                return True
        else:
            old = self._by_session.get(session)
            if old is not None:
                self._remove(self._entries[old])
                self._stats.superseded += 1
            self._disk.forget_evicted(session)
        for eid in tree.prefixes_of(seq):
            prefix = self._entries[eid]
            if prefix.session is None:  # other sessions' entries are theirs to keep
                self._remove(prefix)
                self._stats.superseded += 1

        if not self._make_room(nbytes):
            self._stats.rejected += 1
            if session is not None and self._disk.write(session, seq, layers):
                return False
            if session is not None:
                self._disk.remember_evicted(session)
            logger.info("no room for a %d-byte KV entry (pinned/reserved)", nbytes)
            return False
        self._add(seq, layers, nbytes, session, namespace)
        return True

    def reserve(self, nbytes: int) -> bool:
        """Admit a request that needs `nbytes` of KV: evict idle entries to make room.

        False (nothing evicted) when pinned entries and other reservations leave no
        room; the engine answers 503 + Retry-After. Pair with release().
        """
        if nbytes > self.budget_bytes or not self._make_room(nbytes):
            return False
        self._reserved += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self._reserved = max(self._reserved - nbytes, 0)

    def pin(self, entry: KVEntry) -> None:
        entry.pins += 1

    def unpin(self, entry: KVEntry) -> None:
        entry.pins = max(entry.pins - 1, 0)

    def delete_session(self, key: str) -> bool:
        """Forget a session in memory and on disk. False if it was unknown."""
        found = False
        eid = self._by_session.get(key)
        if eid is not None:
            self._remove(self._entries[eid])
            found = True
        return self._disk.delete(key) or found

    def persist_all(self) -> int:
        """Write every resident named session to disk (graceful shutdown). Returns count."""
        if not self._disk.enabled:
            return 0
        written = 0
        for eid in list(self._by_session.values()):
            entry = self._entries[eid]
            if not entry.persisted and self._write(entry):
                written += 1
        return written

    def clear(self) -> None:
        """Drop every resident entry (model unload); call persist_all() first to keep them."""
        for entry in list(self._entries.values()):
            self._remove(entry)

    # -- internals ---------------------------------------------------------------

    def _session_entry(self, session: str, namespace: str) -> tuple[KVEntry | None, str | None]:
        eid = self._by_session.get(session)
        if eid is not None:
            return self._entries[eid], None
        header = self._disk.headers.get(session)
        if header is not None:
            if header.fingerprint != self.fingerprint:
                self._stats.other_model += 1
                return None, REASON_OTHER_MODEL
            restored = self._restore(session, header, namespace)
            return (restored, None) if restored is not None else (None, REASON_EVICTED)
        if self._disk.was_evicted(session):
            return None, REASON_EVICTED
        return None, None

    def _restore(self, session: str, header: persist.DiskHeader,
                 namespace: str) -> KVEntry | None:
        # Make room before reading, so the load never pushes memory past the budget.
        if header.nbytes > self.budget_bytes or not self._make_room(header.nbytes):
            logger.info("no room to restore session %r (%d bytes)", session, header.nbytes)
            return None
        loaded = self._disk.read(session, header)
        if loaded is None:
            return None
        nbytes = kv_nbytes(loaded.layers)
        if not self._make_room(nbytes):  # header lied about size: stay within budget
            return None
        entry = self._add(loaded.tokens, loaded.layers, nbytes, session, namespace)
        entry.persisted = True
        self._stats.restores += 1
        return entry

    def _tree(self, namespace: str) -> RadixTree:
        tree = self._radix.get(namespace)
        if tree is None:
            tree = self._radix[namespace] = RadixTree()
        return tree

    def _add(self, tokens: tuple[int, ...], layers: Layers, nbytes: int,
             session: str | None, namespace: str = "") -> KVEntry:
        entry = KVEntry(self._next_id, tokens, layers, nbytes, session, time.time(),
                        namespace=namespace)
        self._next_id += 1
        self._entries[entry.id] = entry
        self._tree(namespace).insert(tokens, entry.id)
        self._lru(entry)[entry.id] = None
        if session is not None:
            self._by_session[session] = entry.id
        self._bytes += nbytes
        if self._on_add is not None:
            self._on_add(entry)
        return entry

    def _remove(self, entry: KVEntry) -> None:
        # A pinned entry may be removed (superseded/deleted): its request holds the
        # arrays itself, and unpin() on a removed entry is harmless.
        del self._entries[entry.id]
        tree = self._radix[entry.namespace]
        tree.remove(entry.id)
        if not len(tree) and entry.namespace:
            del self._radix[entry.namespace]  # tenants come and go: no empty trees left
        self._lru(entry).pop(entry.id, None)
        if entry.session is not None and self._by_session.get(entry.session) == entry.id:
            del self._by_session[entry.session]
        self._bytes -= entry.nbytes
        if self._on_remove is not None:
            self._on_remove(entry)

    def _lru(self, entry: KVEntry) -> OrderedDict[int, None]:
        return self._lru_anon if entry.session is None else self._lru_named

    def _touch(self, entry: KVEntry) -> None:
        entry.last_used = time.time()
        self._lru(entry).move_to_end(entry.id)

    def _make_room(self, nbytes: int) -> bool:
        """Evict idle entries until `nbytes` more fits; evict nothing if it cannot."""
        excess = self._bytes + self._reserved + nbytes - self.budget_bytes
        if excess <= 0:
            return True
        if self._bytes - self.pinned_bytes < excess:
            return False
        for lru in (self._lru_anon, self._lru_named):
            for eid in list(lru):
                entry = self._entries[eid]
                if entry.pins > 0:
                    continue
                self._evict(entry)
                excess -= entry.nbytes
                if excess <= 0:
                    return True
        return excess <= 0

    def _evict(self, entry: KVEntry) -> None:
        self._remove(entry)
        self._stats.evictions += 1
        if entry.session is None:
            return
        if entry.persisted or self._write(entry):
            self._stats.spills += 1
        else:
            self._disk.remember_evicted(entry.session)

    def _write(self, entry: KVEntry) -> bool:
        assert entry.session is not None
        if self._disk.write(entry.session, entry.tokens, entry.layers):
            entry.persisted = True
            return True
        return False
