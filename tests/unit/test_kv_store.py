"""KVStore with small real MLX arrays: LRU, sessions, budget, pins, disk spill."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest

from app.kv import persist
from app.kv.layers import Layers, prefix_layers, snapshot_layers
from app.kv.sizing import default_budget_bytes
from app.kv.store import KVStore


def theoretical_kv_bytes(
    layers: int, kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int
) -> int:
    """Bytes of keys + values for `tokens` positions (no step padding, no quantization)."""
    return 2 * layers * kv_heads * head_dim * tokens * dtype_bytes


N_LAYERS = 2
KV_HEADS = 2
HEAD_DIM = 4
T = 10  # tokens per test entry
F32 = 4
ENTRY_BYTES = theoretical_kv_bytes(N_LAYERS, KV_HEADS, HEAD_DIM, T, F32)
FP = "model-a|float32|chatml"


def kv(n_tokens: int, seed: int = 0, dtype: mx.Dtype = mx.float32) -> Layers:
    out = []
    for layer in range(N_LAYERS):
        k1, k2 = mx.random.split(mx.random.key(seed * N_LAYERS + layer))
        shape = (1, KV_HEADS, n_tokens, HEAD_DIM)
        out.append((mx.random.normal(shape, key=k1).astype(dtype),
                    mx.random.normal(shape, key=k2).astype(dtype)))
    mx.eval(out)
    return out


def seq(first: int, n: int = T) -> list[int]:
    """n tokens starting at `first`; different `first`s share no prefix when far apart."""
    return list(range(first, first + n))


def same(a: Layers, b: Layers) -> bool:
    return len(a) == len(b) and all(
        ka.dtype == kb.dtype and mx.array_equal(ka, kb).item()
        and va.dtype == vb.dtype and mx.array_equal(va, vb).item()
        for (ka, va), (kb, vb) in zip(a, b, strict=True)
    )


def store(entries: int = 3, persist_dir: Path | None = None, fp: str = FP) -> KVStore:
    return KVStore(entries * ENTRY_BYTES, fp, persist_dir)


def test_lookup_hit_partial_and_miss() -> None:
    s = store()
    assert s.put(seq(1), kv(T))
    hit = s.lookup(seq(1) + [500, 501])
    assert (hit.matched, hit.reason, hit.source) == (T, "hit", "prefix")
    part = s.lookup(seq(1, 5) + [999])
    assert (part.matched, part.reason) == (5, "diverged at 5")
    assert part.entry is hit.entry
    miss = s.lookup([7000, 7001])
    assert (miss.entry, miss.matched, miss.reason) == (None, 0, "no-entry")
    st = s.stats
    assert (st.lookups, st.hits, st.partial_hits, st.misses, st.cached_tokens) == (3, 1, 1, 1, 15)


def test_session_entry_first_then_global_prefix() -> None:
    s = store(entries=4)
    s.put(seq(1, 8), kv(8), session="a")
    s.put([1, 2, 3, 90, 91], kv(5))
    own = s.lookup(seq(1, 8) + [20], session="a")
    assert (own.source, own.matched, own.reason) == ("session", 8, "hit")
    bent = s.lookup([1, 2, 3, 4, 77], session="a")
    assert (bent.source, bent.matched, bent.reason) == ("session", 4, "diverged at 4")
    # An unknown session falls back to the global longest prefix (shared system prompt).
    other = s.lookup([1, 2, 3, 90, 91, 92], session="b")
    assert (other.source, other.matched, other.reason) == ("prefix", 5, "hit")
    # A session's own entry that shares less than another entry yields to it.
    worse = s.lookup([1, 2, 3, 90, 91], session="a")
    assert (worse.source, worse.matched, worse.reason) == ("prefix", 5, "diverged at 3")


def test_put_supersedes_prefixes() -> None:
    s = store(entries=5)
    s.put([1, 2, 3], kv(3))
    s.put([1, 2, 3, 4, 5], kv(5))
    assert s.stats.entries == 1 and s.total_bytes == 5 * ENTRY_BYTES // T
    # Already covered by a longer entry: nothing new is stored.
    assert s.put([1, 2], kv(2))
    assert s.stats.entries == 1
    s.put([1, 2], kv(2), session="x")
    s.put([1, 2, 3, 4, 5, 6], kv(6), session="x")  # replaces x's entry and the anon one
    infos = s.sessions()
    assert [(i.key, i.tokens, i.resident) for i in infos] == [("x", 6, True)]
    assert s.stats.entries == 1 and s.total_bytes == 6 * ENTRY_BYTES // T
    # Another session's entry is its own: a longer anonymous put does not take it.
    s.put([1, 2, 3, 4, 5, 6, 7], kv(7))
    assert s.stats.entries == 2


def test_lru_order() -> None:
    s = store(entries=3)
    for first in (100, 200, 300):
        s.put(seq(first), kv(T, first))
    s.lookup(seq(100))  # touch A: B becomes the oldest
    s.put(seq(400), kv(T))
    assert s.lookup(seq(200)).reason == "no-entry"
    for first in (100, 300, 400):
        assert s.lookup(seq(first)).reason == "hit"
    assert s.stats.evictions == 1 and s.total_bytes == 3 * ENTRY_BYTES


def test_anonymous_evicted_before_named() -> None:
    s = store(entries=3)
    s.put(seq(100), kv(T), session="s1")  # oldest of all
    s.put(seq(200), kv(T))
    s.put(seq(300), kv(T))
    s.put(seq(400), kv(T), session="s2")
    assert s.lookup(seq(200)).reason == "no-entry"
    assert s.lookup(seq(100), session="s1").source == "session"
    s.put(seq(500), kv(T), session="s3")
    assert s.lookup(seq(300)).reason == "no-entry"
    s.put(seq(600), kv(T), session="s4")  # only named left: the LRU one goes
    assert {i.key for i in s.sessions()} == {"s1", "s3", "s4"}
    gone = s.lookup(seq(400), session="s2")  # no persist dir: cannot come back
    assert (gone.entry, gone.reason) == (None, "evicted")


def test_spill_and_restore_round_trip(tmp_path: Path) -> None:
    s = store(entries=2, persist_dir=tmp_path)
    original = kv(T, seed=7, dtype=mx.float16)
    s.put(seq(100), original, session="s1")
    s.put(seq(200), kv(T), session="s2")
    s.put(seq(300), kv(T), session="s3")  # s1 spills
    assert persist.session_path(tmp_path, "s1").is_file()
    info = {i.key: i for i in s.sessions()}
    assert not info["s1"].resident and info["s1"].on_disk and info["s1"].tokens == T
    assert info["s1"].bytes == ENTRY_BYTES // 2  # float16

    back = s.lookup(seq(100) + [1], session="s1")
    assert (back.source, back.matched, back.reason) == ("session", T, "hit")
    assert back.entry is not None and same(back.entry.layers, original)
    assert back.entry.tokens == tuple(seq(100))
    assert s.stats.restores == 1 and s.stats.spills == 2  # s2 spilled to make room
    assert list(tmp_path.glob(persist.TEMP_PREFIX + "*")) == []

    # A fresh store (restart) finds the files and restores from them.
    s.persist_all()
    s2 = store(entries=2, persist_dir=tmp_path)
    assert {i.key for i in s2.sessions()} == {"s1", "s2", "s3"}
    again = s2.lookup(seq(100), session="s1")
    assert again.entry is not None and same(again.entry.layers, original)


def test_fingerprint_mismatch_is_other_model(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a = store(persist_dir=tmp_path, fp="model-a")
    a.put(seq(1), kv(T), session="s")
    assert a.persist_all() == 1
    b = store(persist_dir=tmp_path, fp="model-b")
    assert [i.other_model for i in b.sessions()] == [True]

    def no_arrays(*args: object, **kwargs: object) -> None:
        raise AssertionError("arrays of another model's file were read")

    monkeypatch.setattr(persist.mx, "load", no_arrays)
    res = b.lookup(seq(1), session="s")
    assert (res.entry, res.reason) == (None, "other-model")
    loaded = persist.load_entry(persist.session_path(tmp_path, "s"), "model-b", "s")
    assert loaded.status == persist.STATUS_OTHER_MODEL and loaded.layers == []
    assert b.stats.other_model == 1


def test_entry_larger_than_budget_not_stored() -> None:
    s = KVStore(ENTRY_BYTES - 1, FP, None)
    assert not s.put(seq(1), kv(T))
    assert s.total_bytes == 0 and s.lookup(seq(1)).reason == "no-entry"
    assert not s.reserve(ENTRY_BYTES)
    assert s.stats.rejected == 1


def test_reserve_evicts_lru_or_refuses() -> None:
    s = store(entries=3)
    s.put(seq(100), kv(T), session="named")
    s.put(seq(200), kv(T))
    s.put(seq(300), kv(T))
    assert s.reserve(ENTRY_BYTES)  # takes the LRU anonymous entry, not the older named
    assert s.lookup(seq(200)).reason == "no-entry"
    assert s.lookup(seq(100), session="named").reason == "hit"
    assert s.reserved_bytes == ENTRY_BYTES
    assert s.total_bytes + s.reserved_bytes <= s.budget_bytes
    assert not s.reserve(3 * ENTRY_BYTES)  # cannot fit next to the first reservation
    assert s.stats.entries == 2  # and a refused reserve evicts nothing
    s.release(ENTRY_BYTES)
    assert s.reserve(3 * ENTRY_BYTES)
    assert s.total_bytes == 0


def test_pinned_entries_are_not_evicted() -> None:
    s = store(entries=2)
    s.put(seq(100), kv(T))
    s.put(seq(200), kv(T))
    a = s.lookup(seq(100)).entry
    assert a is not None
    s.pin(a)
    s.lookup(seq(200))
    s.lookup(seq(100))  # A is now the most recent ...
    s.lookup(seq(200))  # ... and again the oldest, but pinned
    s.put(seq(300), kv(T))
    assert s.lookup(seq(100)).reason == "hit"
    assert s.lookup(seq(200)).reason == "no-entry"
    c = s.lookup(seq(300)).entry
    assert c is not None
    s.pin(c)
    assert s.pinned_bytes == 2 * ENTRY_BYTES
    assert not s.put(seq(400), kv(T))
    assert not s.reserve(1)
    assert s.stats.entries == 2
    s.unpin(a)
    assert s.reserve(ENTRY_BYTES)
    assert s.lookup(seq(100)).reason == "no-entry"
    assert s.lookup(seq(300)).reason == "hit"


def test_delete_session_removes_disk_file(tmp_path: Path) -> None:
    s = store(persist_dir=tmp_path)
    s.put(seq(1), kv(T), session="../../etc/passwd")  # keys never become paths
    s.persist_all()
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name == persist.session_filename("../../etc/passwd")
    assert s.delete_session("../../etc/passwd")
    assert list(tmp_path.iterdir()) == []
    assert s.sessions() == [] and s.total_bytes == 0
    assert s.lookup(seq(1), session="../../etc/passwd").reason == "no-entry"
    assert not s.delete_session("../../etc/passwd")


def test_corrupt_file_reports_evicted_and_is_dropped(tmp_path: Path) -> None:
    s = store(persist_dir=tmp_path)
    s.put(seq(1), kv(T), session="s")
    s.persist_all()
    path = persist.session_path(tmp_path, "s")
    data = path.read_bytes()
    s2 = store(persist_dir=tmp_path)
    path.write_bytes(data[: len(data) // 2])  # truncated after the header was scanned
    res = s2.lookup(seq(1), session="s")
    assert (res.entry, res.reason) == (None, "evicted")
    assert not path.exists() and s2.sessions() == []


def test_bytes_within_one_percent_of_theoretical() -> None:
    n_tokens = 37
    # A step-padded buffer like mlx-lm's KVCache (256 slots), trimmed by snapshot_layers.
    padded = kv(256, dtype=mx.bfloat16)
    layers = snapshot_layers(padded, n_tokens)
    theory = theoretical_kv_bytes(N_LAYERS, KV_HEADS, HEAD_DIM, n_tokens, 2)
    s = KVStore(10 * theory, FP, None)
    assert s.put(seq(1, n_tokens), layers)
    entry = s.lookup(seq(1, n_tokens)).entry
    assert entry is not None
    assert abs(entry.nbytes - theory) <= theory / 100
    assert abs(s.total_bytes - theory) <= theory / 100
    assert same(prefix_layers(entry, 5), [(k[:, :, :5, :], v[:, :, :5, :]) for k, v in padded])


def test_put_rejects_untrimmed_kv() -> None:
    s = store()
    with pytest.raises(ValueError):
        s.put(seq(1), kv(T + 1))


def test_default_budget_is_positive() -> None:
    assert default_budget_bytes() >= 64 << 20


def test_snapshot_releases_the_padded_buffer() -> None:
    before = mx.get_active_memory()
    padded = kv(1 << 15)  # 1 MiB per array
    layers = snapshot_layers(padded, 8)
    del padded
    mx.synchronize()  # a GPU frees a buffer once the kernels reading it are done
    held = mx.get_active_memory() - before
    assert held < (1 << 20), "a lazy slice kept the whole step-padded buffer alive"
    assert layers[0][0].shape == (1, KV_HEADS, 8, HEAD_DIM)


def test_namespaces_isolate_prefix_reuse() -> None:
    """A tenant's prompt is found as a prefix only by lookups of its own namespace."""
    s = store()
    assert s.put(seq(1), kv(T), namespace="tenant-a")
    assert s.lookup(seq(1) + [500], namespace="tenant-a").matched == T
    assert s.lookup(seq(1) + [500], namespace="tenant-b").matched == 0
    assert s.lookup(seq(1) + [500]).matched == 0  # nor the shared namespace
    assert s.put(seq(1), kv(T, seed=1))  # the same tokens, shared: a separate entry
    assert s.stats.entries == 2
    assert s.lookup(seq(1) + [500]).matched == T
    s.clear()
    assert s.stats.entries == 0
    assert s.lookup(seq(1), namespace="tenant-a").matched == 0
