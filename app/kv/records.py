"""The KV store's records: an entry, a lookup's answer, a session's listing, counters.

Plain data; the arrays of an entry are MLX's (app/kv/layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.kv.layers import Layers


@dataclass(slots=True, eq=False)
class KVEntry:
    id: int
    tokens: tuple[int, ...]
    layers: Layers
    """Per layer (keys, values), [1, kv_heads, len(tokens), head_dim], no padding."""
    nbytes: int
    session: str | None
    last_used: float
    """Seconds since the epoch."""
    pins: int = 0
    """Running requests using this entry; pinned entries are never evicted."""
    persisted: bool = False
    """The session's disk file holds exactly this entry (a spill needs no write)."""
    namespace: str = ""
    """Only lookups of this namespace find the entry as a prefix (tenant isolation)."""


@dataclass(slots=True)
class Lookup:
    entry: KVEntry | None
    matched: int
    """Leading tokens of the query whose KV is `entry.layers[..., :matched, :]`."""
    reason: str
    """'hit', 'no-entry', 'evicted', 'other-model' or 'diverged at N'."""
    source: str | None = None
    """'session' (the session's own entry), 'prefix' (global longest prefix) or None."""


@dataclass(slots=True)
class SessionInfo:
    key: str
    tokens: int
    bytes: int
    resident: bool
    on_disk: bool
    """A disk file exists (for a resident session: an up-to-date one)."""
    last_used: float
    other_model: bool = False
    """The disk file was written for another model fingerprint (unusable)."""


@dataclass(slots=True)
class StoreStats:
    lookups: int = 0
    hits: int = 0
    partial_hits: int = 0
    misses: int = 0
    cached_tokens: int = 0
    puts: int = 0
    rejected: int = 0
    superseded: int = 0
    evictions: int = 0
    spills: int = 0
    restores: int = 0
    other_model: int = 0
    # Gauges, filled in by KVStore.stats.
    entries: int = 0
    resident_bytes: int = 0
    reserved_bytes: int = 0
    pinned_bytes: int = 0
    budget_bytes: int = 0
    disk_sessions: int = 0
