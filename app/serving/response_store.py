"""Stored responses (`store: true`): what `previous_response_id` continues from.

A record holds the conversation as chat messages (instructions excluded: each request
brings its own), the KV session key of the conversation (its resident cache lives in the
KV store, app/kv/), the request's input items and the response object. Records live in
memory (the most recent `capacity`) and, when session persistence is on (`MLXD_KV_DIR`),
also as one JSON file each under `<kv_dir>/responses/`, so a conversation survives a
restart together with its persisted KV session. Blocking (file I/O): call from a worker
thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^resp_[0-9a-f]{32}$")
DEFAULT_CAPACITY = 10_000


@dataclass(slots=True)
class StoredResponse:
    id: str
    session: str
    """KV session key of the conversation (the same for every turn of it)."""
    messages: list[dict[str, Any]]
    """The conversation through this response's reply, as chat messages."""
    input_items: list[dict[str, Any]]
    response: dict[str, Any]
    tenant: str | None = None
    """The API key's tenant that created it (None: keys off); only it may read it."""


class ResponseStore:
    def __init__(self, directory: Path | None, capacity: int = DEFAULT_CAPACITY) -> None:
        self.directory = directory
        self.capacity = capacity
        self._mem: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def get(self, response_id: str) -> StoredResponse | None:
        if not ID_PATTERN.match(response_id):
            return None
        with self._lock:
            rec = self._mem.get(response_id)
            if rec is not None:
                self._mem.move_to_end(response_id)
                return rec
        path = self._path(response_id)
        if path is None or not path.is_file():
            return None
        try:
            rec = StoredResponse(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            logger.warning("unreadable stored response %s", path, exc_info=True)
            return None
        self._remember(rec)
        return rec

    def put(self, rec: StoredResponse) -> None:
        self._remember(rec)
        path = self._path(rec.id)
        if path is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(rec), ensure_ascii=False))
            os.replace(tmp, path)  # a reader never sees half a file

    def delete(self, response_id: str) -> bool:
        if not ID_PATTERN.match(response_id):
            return False
        with self._lock:
            found = self._mem.pop(response_id, None) is not None
        path = self._path(response_id)
        if path is not None and path.is_file():
            path.unlink()
            found = True
        return found

    def _remember(self, rec: StoredResponse) -> None:
        with self._lock:
            self._mem[rec.id] = rec
            self._mem.move_to_end(rec.id)
            while len(self._mem) > self.capacity:
                self._mem.popitem(last=False)

    def _path(self, response_id: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{response_id}.json"
