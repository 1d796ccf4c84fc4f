"""A logging filter that lets each distinct message through once per interval.

Under a flood (thousands of refused connections, `accept()` failing for want of file
descriptors) the same warning would otherwise be written thousands of times a second,
filling the disk with copies of one line; once per interval, with a count of what was
held back, says the same.
"""

from __future__ import annotations

import logging
import threading
import time

INTERVAL_SECONDS = 10.0


class Throttle(logging.Filter):
    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # The first line: asyncio's messages carry the changing detail below it.
        key = (record.name, str(record.msg).split("\n", 1)[0])
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, held + 1)
                return False
            self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last " \
                f"{self.interval:g} s)"
        return True
