"""Log lines that cannot flood: at most one per interval for each kind of event, with the count held back.

A node that receives a million malformed messages, or a client that is sent
forged replies, must not write a million lines (nor a traceback each).
"""
from __future__ import annotations

import logging
import time


class Throttled:
    """``warning(key, msg, *args)`` logs the first event of ``key`` and then at most one per ``interval``."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log now or count the event; True when a line was written."""
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (and %d more like it in the last %.0fs)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
