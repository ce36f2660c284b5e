"""The node's clock for leases: monotonic, and counting the time the machine was suspended.

``time.monotonic()`` stops while a Linux machine is suspended, so a node waking
from suspend would believe a lease that ran out long ago is still valid.
``CLOCK_BOOTTIME`` keeps counting through suspend (and, like monotonic, through
SIGSTOP). Every lease decision takes its ``now`` from a ``Clock``, so tests can
inject a fake one instead of sleeping.
"""
from __future__ import annotations

import time

if hasattr(time, "CLOCK_BOOTTIME"):
    def _now() -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
else:  # not Linux: the best the OS offers
    _now = time.monotonic


class Clock:
    """Seconds on a clock that never goes backwards and counts suspended time where the OS can."""

    def now(self) -> float:
        return _now()


class FakeClock(Clock):
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
