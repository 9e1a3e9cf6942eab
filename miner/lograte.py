"""Log lines a stranger can cause, at most once per interval per kind.

The miner faces the open internet: anything a request can trigger (a malformed request, an
internal error, a refused connection) must not become one log line per request, or a stranger
fills the disk and buries the lines that matter. Repeats within the interval are counted and
the count is reported with the next line of the same kind.
"""

from __future__ import annotations

import logging
import time
from typing import Callable


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic, max_kinds: int = 256):
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.max_kinds = max_kinds
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args, exc_info: bool = False) -> bool:
        """Log unless a line of this `kind` went out less than `interval_s` ago; True if logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_kinds:
            # Kinds are chosen by our code, never by the request; this is only a backstop.
            self._last.clear()
            self._suppressed.clear()
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        if skipped:
            msg = f"{msg} (and {skipped} more like it in the last {now - last:.0f} s)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, kind: str, msg: str, *args) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def error(self, kind: str, msg: str, *args, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, kind, msg, *args, exc_info=exc_info)
