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

from .. import classes, store
from .activation import Activation, PassivateRequest
from .host import NodeParts

logger = logging.getLogger(__name__)

# After this many passivations in a row, freed memory is handed back to the OS (gc + malloc_trim).
TRIM_AFTER = 1000
# Activations asked to passivate per pass. When 100,000 go idle at once, asking them all in one loop turn
# kept the event loop busy for seconds (each runs begin_handoff and terminate): heartbeats waited, and
# the node lost its lease. A pass that leaves some for later comes back after BACKLOG_PAUSE.
ASK_BATCH = 500
BACKLOG_PAUSE = 0.05
# Seconds after a burst of passivations until the pass that trims the memory they freed.
TRIM_SOON = 0.5
# Rows per statement when passivated activations write their rows idle (group commit, as starts do).
WRITE_BATCH = 500


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
        self._writes: list[tuple[Activation, Any, asyncio.Future]] = []
        self._writing = False

    def timeouts(self) -> dict[type, float]:
        """The idle timeout of every registered class that has one."""
        default = self.node.hs.IDLE_TIMEOUT
        return {cls: t for cls in classes.registered() if (t := timeout_of(cls, default)) is not None}

    def period(self) -> float:
        """How often to look: half the shortest timeout of the registered classes, between 0.2 s and 10 s."""
        timeouts = self.timeouts().values()
        return min(10.0, max(0.2, min(timeouts) / 2)) if timeouts else 10.0

    async def loop(self) -> None:
        wait = self.period()
        while True:
            await asyncio.sleep(wait)
            wait = self.period()
            if self.node.lease_valid() and not self.node.handoff.leaving:
                asked, more = self.step(asyncio.get_running_loop().time())
                if more:
                    wait = BACKLOG_PAUSE
                elif self._since_trim >= TRIM_AFTER:
                    if asked or self._writing:
                        wait = min(wait, TRIM_SOON)  # a burst is ending: trim once its activations are gone
                    else:
                        self._trim()

    def step(self, now: float, limit: int = ASK_BATCH) -> tuple[int, bool]:
        """Ask up to ``limit`` idle activations to passivate: (how many were asked, whether more are due).

        One pass costs a dictionary lookup and a comparison per activation, and
        nothing at all while no registered class has an idle timeout.
        """
        timeouts = self.timeouts()
        if not timeouts:
            return 0, False
        asked = 0
        for act in list(self.node.activations.values()):
            timeout = timeouts.get(act.cls)
            if timeout is None or now - act.last_active < timeout:
                continue  # the common case first: cheap enough for 100,000 activations a pass
            if is_idle(act.last_active, act.timers, not act.mailbox.empty(), act.busy, timeout, now):
                if asked == limit:
                    self._count(asked)
                    return asked, True
                self._ask(act)
                asked += 1
        self._count(asked)
        return asked, False

    def _count(self, asked: int) -> None:
        self.passivated += asked
        self._since_trim += asked

    def _ask(self, act: Activation) -> None:
        act.busy = True  # new messages go elsewhere (the client retries and reactivates it)
        act.post(PassivateRequest())

    # ------------------------------------------------------------ the rows, idle (group commit)

    async def write_idle(self, act: Activation, state: Any) -> bool:
        """Write ``act``'s row idle with its handoff state, fenced on (node, epoch); with the other
        passivations of the same moment, in one statement."""
        fut = asyncio.get_running_loop().create_future()
        self._writes.append((act, state, fut))
        if not self._writing:
            self._writing = True
            asyncio.ensure_future(self._write_pending())
        return await fut

    async def _write_pending(self) -> None:
        try:
            while self._writes:
                batch, self._writes = self._writes[:WRITE_BATCH], self._writes[WRITE_BATCH:]
                by_incarnation: dict[str, list[tuple[Activation, Any, asyncio.Future]]] = {}
                for entry in batch:
                    by_incarnation.setdefault(entry[0].node_id, []).append(entry)
                for node_id, entries in by_incarnation.items():
                    done = await self.node.write(store.passivate_many, node_id,
                                                 [(a.row_id, a.epoch, state) for a, state, _ in entries],
                                                 keys=[a.key for a, _, _ in entries])
                    for act, _, fut in entries:
                        if not fut.done():
                            fut.set_result(done is not None and act.row_id in done)
        finally:
            self._writing = False

    def _trim(self) -> None:
        """Hand memory of thousands of passivated activations back to the OS (their objects are freed, but
        the allocator keeps the pages unless asked).

        Ended activations are freed by reference counting (they leave no cycles);
        only the young generations are collected here. A full collection of a web
        server's heap (the embedded node) held the GIL long enough to starve the
        heartbeat thread until the node lost its lease.
        """
        self._since_trim = 0
        # A dict never shrinks: the table sized for 100,000 activations would stay. Rebuilt here, on the
        # loop and between two awaits, so every part sees one table or the other, never a change mid-read.
        self.node.activations = dict(self.node.activations)
        gc.collect(1)
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc: the memory is reused by the next activations anyway
        logger.info("processhub: node %s passivated %d processes so far; memory trimmed", self.node.name,
                    self.passivated)
