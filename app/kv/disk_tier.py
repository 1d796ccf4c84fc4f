"""The KV store's disk tier: named sessions written out (spilled on eviction, persisted
at shutdown or unload) and read back on their next request, one file each
(app/kv/persist.py); and the keys of sessions evicted without a file, so their next
request can say "evicted" instead of "no-entry".
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from pathlib import Path

from app.kv import persist
from app.kv.layers import Layers

logger = logging.getLogger(__name__)

# Remembered evicted keys are user input: bounded.
MAX_TOMBSTONES = 10_000


class DiskTier:
    def __init__(self, directory: Path | None, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.headers: dict[str, persist.DiskHeader] = {}
        """Session key -> its file's header, for every file of this store's folder."""
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for header in persist.scan(directory):
                self.headers[header.session] = header
            logger.info("KV store: %d session file(s) in %s", len(self.headers), directory)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def write(self, session: str, tokens: tuple[int, ...], layers: Layers) -> bool:
        """Write a session's KV; False (logged) without a folder or when writing fails."""
        if self.directory is None:
            return False
        path = persist.session_path(self.directory, session)
        try:
            self.headers[session] = persist.save_entry(
                path, tokens, layers, session, self.fingerprint
            )
        except Exception:  # noqa: BLE001 - a full disk must not take the engine down
            logger.warning("could not write KV file for session %r", session, exc_info=True)
            return False
        return True

    def read(self, session: str, header: persist.DiskHeader) -> persist.Loaded | None:
        """A session's KV from its file; None when unusable (another model's file stays,
        a broken one is deleted)."""
        loaded = persist.load_entry(header.path, self.fingerprint, session)
        if loaded.status == persist.STATUS_OTHER_MODEL:
            return None
        if loaded.status != persist.STATUS_OK:
            logger.warning("dropping unusable KV file for session %r: %s", session,
                           loaded.status)
            self.headers.pop(session, None)
            with contextlib.suppress(OSError):
                header.path.unlink()
            return None
        return loaded

    def delete(self, session: str) -> bool:
        """Forget a session's file and tombstone; False if there was neither."""
        found = self.headers.pop(session, None) is not None
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                persist.session_path(self.directory, session).unlink()
        return self.forget_evicted(session) or found

    def remember_evicted(self, session: str) -> None:
        self._tombstones[session] = None
        self._tombstones.move_to_end(session)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)

    def forget_evicted(self, session: str) -> bool:
        return self._tombstones.pop(session, None) is not None

    def was_evicted(self, session: str) -> bool:
        return session in self._tombstones
