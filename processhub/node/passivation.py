"""Idle passivation (virtual actors, as Orleans): an activation idle for ``idle_timeout`` is deactivated.

Idle means: it handled no message for that long, has no pending ``send_after``
timer, nothing queued, and is not stopping or moving. It then gets a passivate
request in its mailbox (so it ends between two messages, never inside one):
``begin_handoff()`` returns its state, ``terminate("idle")`` runs, and its row
becomes ``idle`` (desired, running nowhere) with that state. The next call,
cast or start activates it again wherever placement says, with ``init(arg)``
and ``end_handoff(state)``. A node that dies leaves its idle rows alone: they
are not lost, nothing runs them until a message arrives.

``idle_timeout`` is a class option, defaulting to the ``IDLE_TIMEOUT`` setting
(None: never).
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from typing import Any

from .. import classes
from .activation import Activation, PassivateRequest
from .host import NodeParts

logger = logging.getLogger(__name__)

# After this many passivations in a row, freed memory is handed back to the OS (gc + malloc_trim).
TRIM_AFTER = 1000


def is_idle(last_active: float, timers: int, queued: bool, busy: bool, timeout: float | None, now: float) -> bool:
    """Whether an activation is due for passivation (pure: the table tests read it)."""
    return timeout is not None and not busy and not queued and timers == 0 and now - last_active >= timeout


def timeout_of(cls: Any, default: float | None) -> float | None:
    own = getattr(cls, "idle_timeout", None)
    return own if own is not None else default


class Passivator:
    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.passivated = 0
        self._since_trim = 0

    def period(self) -> float:
        """How often to look: half the shortest timeout of the registered classes, between 0.2 s and 10 s."""
        default = self.node.hs.IDLE_TIMEOUT
        timeouts = [t for cls in classes.registered() if (t := timeout_of(cls, default)) is not None]
        return min(10.0, max(0.2, min(timeouts) / 2)) if timeouts else 10.0

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.period())
            if self.node.lease_valid() and not self.node.handoff.leaving:
                if not self.step(asyncio.get_running_loop().time()) and self._since_trim >= TRIM_AFTER:
                    self._trim()

    def step(self, now: float) -> int:
        """Ask every idle activation to passivate; returns how many were asked."""
        default = self.node.hs.IDLE_TIMEOUT
        asked = 0
        for act in list(self.node.activations.values()):
            if is_idle(act.last_active, act.timers, not act.mailbox.empty(), act.busy,
                       timeout_of(act.cls, default), now):
                self._ask(act)
                asked += 1
        self.passivated += asked
        self._since_trim += asked
        return asked

    def _ask(self, act: Activation) -> None:
        act.busy = True  # new messages go elsewhere (the client retries and reactivates it)
        act.post(PassivateRequest())

    def _trim(self) -> None:
        """Hand memory of thousands of passivated activations back to the OS (their objects are freed, but
        the allocator keeps the pages unless asked)."""
        self._since_trim = 0
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc: the memory is reused by the next activations anyway
        logger.info("processhub: node %s passivated %d processes so far; memory trimmed", self.node.name,
                    self.passivated)
