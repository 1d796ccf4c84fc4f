"""Stop strings matched on decoded text, across token boundaries.

A stop string can begin in one token and end in a later one, so text that could be
the start of a stop string is held back until it is ruled in or out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class StopMatcher:
    stops: Sequence[str]
    _held: str = ""
    stopped: bool = False
    _max_len: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.stops = [s for s in self.stops if s]
        self._max_len = max((len(s) for s in self.stops), default=0)

    def push(self, text: str) -> str:
        """Feed new text; return what is safe to emit. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        cut = self._earliest_stop(buf)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Text held back when generation ends without a stop (eos or length)."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _earliest_stop(self, buf: str) -> int | None:
        best: int | None = None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (best is None or i < best):
                best = i
        return best

    def _partial_suffix_len(self, buf: str) -> int:
        # Longest suffix of buf that is a proper prefix of some stop string.
        for n in range(min(self._max_len - 1, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
