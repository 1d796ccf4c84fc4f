"""Radix (compressed prefix) tree over token ids, indexing cached KV entries.

Each edge holds a run of tokens, so a 50k-token conversation is a handful of nodes,
not 50k: insert/match cost O(length) tuple-slice compares (C speed), never a Python
loop per token. Pure Python, no MLX: the store owns the payloads, this owns the ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# Tokens compared per tuple-slice step when looking for a divergence point: large
# enough that Python overhead vanishes, small enough that the slice copies stay cheap.
COMPARE_CHUNK = 256

EntryId = int


def _as_tuple(tokens: Sequence[int]) -> tuple[int, ...]:
    return tokens if isinstance(tokens, tuple) else tuple(tokens)


def common_prefix_len(a: Sequence[int], b: Sequence[int], b_start: int = 0) -> int:
    """Length of the common prefix of `a` and `b[b_start:]` (without copying `b`)."""
    a = _as_tuple(a)
    b = _as_tuple(b)
    n = min(len(a), len(b) - b_start)
    i = 0
    while i < n:
        j = min(i + COMPARE_CHUNK, n)
        if a[i:j] != b[b_start + i : b_start + j]:
            # The mismatch is inside this chunk; a short linear scan finds it.
            while a[i] == b[b_start + i]:
                i += 1
            return i
        i = j
    return max(n, 0)


@dataclass(slots=True, eq=False)
class _Node:
    edge: tuple[int, ...]
    """Tokens on the edge from the parent to this node (empty only for the root)."""
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    """Child nodes keyed by the first token of their edge."""
    entries: set[EntryId] = field(default_factory=set)
    """Entries whose token sequence ends exactly at this node."""


class RadixTree:
    """Maps token sequences to entry ids; answers longest-common-prefix queries."""

    def __init__(self) -> None:
        self._root = _Node(edge=(), parent=None)
        self._ends: dict[EntryId, _Node] = {}

    def __len__(self) -> int:
        return len(self._ends)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._ends

    def insert(self, tokens: Sequence[int], entry_id: EntryId) -> None:
        """Index `entry_id` under `tokens`. Several entries may share one sequence."""
        if entry_id in self._ends:
            raise ValueError(f"entry {entry_id} is already in the tree")
        seq = _as_tuple(tokens)
        node, i = self._root, 0
        while i < len(seq):
            child = node.children.get(seq[i])
            if child is None:
                leaf = _Node(edge=seq[i:], parent=node)
                node.children[seq[i]] = leaf
                node, i = leaf, len(seq)
                break
            m = common_prefix_len(child.edge, seq, i)
            if m < len(child.edge):
                child = self._split(child, m)
            node, i = child, i + m
        node.entries.add(entry_id)
        self._ends[entry_id] = node

    def remove(self, entry_id: EntryId) -> bool:
        """Drop `entry_id`; prune and re-compress the path. False if it was absent."""
        node = self._ends.pop(entry_id, None)
        if node is None:
            return False
        node.entries.discard(entry_id)
        # Prune empty leaves upwards, then merge a lone child into its parent so the
        # tree stays compressed (every non-root node either ends an entry or branches).
        while node.parent is not None and not node.entries and not node.children:
            del node.parent.children[node.edge[0]]
            node = node.parent
        if node.parent is not None and not node.entries and len(node.children) == 1:
            (child,) = node.children.values()
            child.edge = node.edge + child.edge
            child.parent = node.parent
            node.parent.children[child.edge[0]] = child
        return True

    def longest_match(self, tokens: Sequence[int]) -> tuple[EntryId | None, int]:
        """The entry sharing the longest common prefix with `tokens`, and that length.

        The match may end inside an entry's sequence (entry [1,2,3,4], query [1,2,9]
        -> matched 2). Among entries sharing the same best prefix the shortest one is
        returned (least KV to slice). (None, 0) when nothing shares a first token.
        """
        seq = _as_tuple(tokens)
        node, i = self._root, 0
        while i < len(seq):
            child = node.children.get(seq[i])
            if child is None:
                break
            m = common_prefix_len(child.edge, seq, i)
            i += m
            node = child
            if m < len(child.edge):
                break  # diverged (or query ended) mid-edge: any entry below shares i
        if i == 0:
            return None, 0
        return self._shallowest_entry(node), i

    def prefixes_of(self, tokens: Sequence[int]) -> list[EntryId]:
        """Entries whose whole sequence is a prefix of `tokens` (equal included)."""
        seq = _as_tuple(tokens)
        found = list(self._root.entries)
        node, i = self._root, 0
        while i < len(seq):
            child = node.children.get(seq[i])
            if child is None:
                break
            m = common_prefix_len(child.edge, seq, i)
            if m < len(child.edge):
                break
            node, i = child, i + m
            found.extend(node.entries)
        return found

    def divergence(self, entry_id: EntryId, tokens: Sequence[int]) -> int:
        """How many leading tokens `tokens` shares with the entry (the miss position)."""
        node = self._ends.get(entry_id)
        if node is None:
            raise KeyError(entry_id)
        seq = _as_tuple(tokens)
        i = 0
        for step in self._path(node):
            m = common_prefix_len(step.edge, seq, i)
            i += m
            if m < len(step.edge):
                break
        return i

    def tokens_of(self, entry_id: EntryId) -> tuple[int, ...]:
        """Rebuild the entry's sequence from its path (O(length); for tests and logs)."""
        node = self._ends.get(entry_id)
        if node is None:
            raise KeyError(entry_id)
        out: list[int] = []
        for step in self._path(node):
            out.extend(step.edge)
        return tuple(out)

    def node_count(self) -> int:
        """Nodes in the tree, root included (a compressed tree has < 2 per entry + 1)."""
        return sum(1 for _ in self._walk(self._root))

    # -- internals ---------------------------------------------------------------

    def _split(self, child: _Node, at: int) -> _Node:
        """Cut `child`'s edge after `at` tokens; return the new middle node."""
        parent = child.parent
        assert parent is not None
        mid = _Node(edge=child.edge[:at], parent=parent)
        parent.children[mid.edge[0]] = mid
        child.edge = child.edge[at:]
        child.parent = mid
        mid.children[child.edge[0]] = child
        return mid

    @staticmethod
    def _shallowest_entry(node: _Node) -> EntryId:
        # Every leaf of a pruned tree ends an entry, so following any child terminates.
        while not node.entries:
            node = next(iter(node.children.values()))
        return min(node.entries)

    @staticmethod
    def _path(node: _Node) -> list[_Node]:
        path: list[_Node] = []
        cur: _Node | None = node
        while cur is not None and cur.parent is not None:
            path.append(cur)
            cur = cur.parent
        path.reverse()
        return path

    @staticmethod
    def _walk(node: _Node) -> Iterator[_Node]:
        stack = [node]
        while stack:
            cur = stack.pop()
            yield cur
            stack.extend(cur.children.values())
