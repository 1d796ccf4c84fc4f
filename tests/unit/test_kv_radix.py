"""Radix tree over token ids: pure Python, checked against brute force."""

from __future__ import annotations

import random

import pytest

from app.kv.radix import RadixTree, common_prefix_len

SEEDS = range(8)
RANDOM_OPS = 400
LONG_TOKENS = 50_000


def brute_lcp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_common_prefix_len_edges() -> None:
    assert common_prefix_len((), (1, 2)) == 0
    assert common_prefix_len((1, 2, 3), [1, 2, 3]) == 3
    assert common_prefix_len((1, 2, 3), (1, 2)) == 2
    assert common_prefix_len((5, 6), (1, 5, 6, 7), b_start=1) == 2
    assert common_prefix_len((5, 6), (1, 5), b_start=3) == 0
    long = tuple(range(10_000))
    bent = long[:7_777] + (-1,) + long[7_778:]
    assert common_prefix_len(long, bent) == 7_777


def test_insert_and_exact_match() -> None:
    t = RadixTree()
    t.insert([1, 2, 3, 4], 10)
    assert t.longest_match([1, 2, 3, 4]) == (10, 4)
    assert t.longest_match([1, 2, 3, 4, 5, 6]) == (10, 4)
    assert t.longest_match([9]) == (None, 0)
    assert t.longest_match([]) == (None, 0)
    assert 10 in t and len(t) == 1


def test_mid_edge_divergence() -> None:
    t = RadixTree()
    t.insert([1, 2, 3, 4], 1)
    assert t.longest_match([1, 2, 9]) == (1, 2)
    assert t.longest_match([1, 2]) == (1, 2)  # query ends inside the entry
    assert t.divergence(1, [1, 2, 9]) == 2
    assert t.divergence(1, [7]) == 0


def test_branching_and_split() -> None:
    t = RadixTree()
    t.insert([1, 2, 3, 4], 1)
    t.insert([1, 2, 5, 6], 2)  # splits the [1,2,3,4] edge after 2
    t.insert([1, 2], 3)  # ends exactly at the split node
    assert t.longest_match([1, 2, 5, 6, 7]) == (2, 4)
    assert t.longest_match([1, 2, 3]) == (1, 3)
    assert t.longest_match([1, 2, 8]) == (3, 2)  # the exact-prefix entry is shortest
    assert sorted(t.prefixes_of([1, 2, 3, 4, 5])) == [1, 3]
    assert t.tokens_of(2) == (1, 2, 5, 6)
    assert t.divergence(2, [1, 2, 3]) == 2


def test_remove_prunes_and_recompresses() -> None:
    t = RadixTree()
    t.insert([1, 2, 3, 4], 1)
    t.insert([1, 2, 5, 6], 2)
    assert t.node_count() == 4  # root, [1,2], [3,4], [5,6]
    assert t.remove(2)
    assert not t.remove(2)
    assert t.node_count() == 2  # the [1,2] split node merged back into [1,2,3,4]
    assert t.longest_match([1, 2, 5]) == (1, 2)
    assert t.tokens_of(1) == (1, 2, 3, 4)
    assert t.remove(1)
    assert t.node_count() == 1
    assert t.longest_match([1, 2]) == (None, 0)


def test_same_sequence_several_entries() -> None:
    t = RadixTree()
    t.insert([4, 5], 1)
    t.insert([4, 5], 2)
    with pytest.raises(ValueError):
        t.insert([4, 5, 6], 1)
    t.remove(1)
    assert t.longest_match([4, 5, 6]) == (2, 2)


def test_long_sequences_are_few_nodes() -> None:
    base = tuple(range(LONG_TOKENS))
    t = RadixTree()
    for i in range(20):
        # All share a 40k-token "system prompt", then diverge.
        seq = base[:40_000] + tuple(range(1_000_000 * (i + 1), 1_000_000 * (i + 1) + 10_000))
        t.insert(seq, i)
    assert t.node_count() <= 2 * 20 + 1
    query = base[:40_000] + (1_000_000 * 7, 1_000_000 * 7 + 1, -5)
    eid, matched = t.longest_match(query)
    assert (eid, matched) == (6, 40_002)
    assert t.divergence(3, query) == 40_000


@pytest.mark.parametrize("seed", SEEDS)
def test_random_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    t = RadixTree()
    live: dict[int, tuple[int, ...]] = {}
    next_id = 0

    def random_seq() -> tuple[int, ...]:
        # A small alphabet and shared stems force many splits and merges.
        if live and rng.random() < 0.6:
            stem = rng.choice(list(live.values()))
            stem = stem[: rng.randint(0, len(stem))]
        else:
            stem = ()
        return stem + tuple(rng.randint(0, 3) for _ in range(rng.randint(0, 12)))

    for _ in range(RANDOM_OPS):
        if live and rng.random() < 0.35:
            victim = rng.choice(list(live))
            assert t.remove(victim)
            del live[victim]
        else:
            seq = random_seq()
            t.insert(seq, next_id)
            live[next_id] = seq
            next_id += 1
        query = random_seq()
        eid, matched = t.longest_match(query)
        best = max((brute_lcp(s, query) for s in live.values()), default=0)
        assert matched == best
        if best == 0:
            assert eid is None
        else:
            assert eid is not None and brute_lcp(live[eid], query) == best
        assert sorted(t.prefixes_of(query)) == sorted(
            i for i, s in live.items() if query[: len(s)] == s
        )
        for i, s in list(live.items())[:5]:
            assert t.tokens_of(i) == s
            assert t.divergence(i, query) == brute_lcp(s, query)
        assert len(t) == len(live)
        # Compressed: every non-root node ends an entry or branches.
        assert t.node_count() <= 2 * len(live) + 1
