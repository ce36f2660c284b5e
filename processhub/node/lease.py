"""The node's lease: registration, heartbeats, the watchdog, fencing and rejoining (DESIGN I2, I3).

A lease is valid on the node's own clock until ``sent + NODE_TTL - SAFETY_MARGIN``,
where ``sent`` is taken *before* the heartbeat statement leaves; the database
lets other nodes take the node's rows only once its own clock shows
``heartbeat_at + NODE_TTL``. In between lies the margin, where a fencing node may
still run ``terminate("lease lost")``; past it nothing of this node may run.

A node that cannot renew in time fences: it stops every activation, answers
nothing more under that incarnation, and registers again as a new one. User code
it cannot stop (a plain ``def`` handler in a thread) would run beside the new
owner once the lease has ended, so a node that may do so ends its OS process
instead (``runhub`` expects a process manager to start it again).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import socket
import sys
import uuid
from dataclasses import dataclass

from django.db import DatabaseError

from .. import classes, dbthreads, store
from ..exceptions import ProcessHubError
from ..transport import FRAMED_SUFFIX
from ..values import DOWN
from . import decisions
from .host import NodeParts

logger = logging.getLogger(__name__)

# Exit status of a node that ended its OS process because user code it could not stop outlived its lease.
EXIT_STUCK_USER_CODE = 70
# Seconds a node leaving on SIGTERM still waits, heartbeats going, for user code that outlived its drain.
LEAVE_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease on the node's clock: serve until ``soft``; others may take over from ``hard`` on."""

    soft: float
    hard: float

    @classmethod
    def renewed_at(cls, sent: float, ttl: float, margin: float) -> Lease:
        return cls(sent + ttl - margin, sent + ttl)

    def valid(self, now: float) -> bool:
        return now < self.soft

    def extended(self, other: Lease) -> Lease:
        """A later renewal never shortens the lease (answers can arrive out of order)."""
        return Lease(max(self.soft, other.soft), max(self.hard, other.hard))


NO_LEASE = Lease(-math.inf, -math.inf)


def watchdog_step(now: float, lease: Lease, fenced: bool, poll: float = 0.5) -> float | None:
    """Seconds the watchdog may sleep before it looks again, or None: fence now."""
    if fenced:
        return 0.05
    left = lease.soft - now
    if left > 0:
        return min(left, poll)
    return None


class LeaseKeeper:
    """Holds the node's lease: register, renew, watch, fence, rejoin."""

    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.lease = NO_LEASE
        self.fenced = True
        self._pool = self._new_pool()
        self._rejoining = False

    @staticmethod
    def _new_pool() -> concurrent.futures.ThreadPoolExecutor:
        # A thread of its own: renewals never queue behind slow reconcile statements.
        return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="processhub-heartbeat")

    def valid(self) -> bool:
        return not self.fenced and self.lease.valid(self.node.clock.now())

    # ------------------------------------------------------------ registration

    async def register(self) -> None:
        """Register a new incarnation: a new id and channel, subscribed before the row exists."""
        node, hs = self.node, self.node.hs
        node_id = uuid.uuid4().hex
        channel = f"{hs.PREFIX}.node.{node_id}{FRAMED_SUFFIX}"  # read by processhub's transport: frames OK
        await node.rt.transport.subscribe(channel, node.inbox.receive)
        sent = node.clock.now()
        try:
            await node.rt.db(store.register_node, node_id, node.name, socket.gethostname(), os.getpid(), channel,
                             hs.NODE_TTL, classes.labels())
        except BaseException:
            await self._unsubscribe(channel)
            raise
        node.id, node.channel = node_id, channel
        self.lease = Lease.renewed_at(sent, hs.NODE_TTL, hs.LEASE_SAFETY_MARGIN)
        self.fenced = False
        twins = await node.rt.db(store.same_name_live, node_id, node.name)
        if twins:
            # Placement hashes names, so a second live node of this name is invisible to it.
            # A restart faster than NODE_TTL also looks like this, until the old lease runs out.
            logger.warning("processhub: another live node is named %s (%s); node names must be unique",
                           node.name, ", ".join(twins))
        logger.info("processhub: node %s up (incarnation %s)", node.name, node_id)
        node.lifecycle("node_up")
        await node.event({"e": "node_up", "node": node_id})
        node.reconciler.wake(full=True)

    async def _unsubscribe(self, channel: str) -> None:
        try:
            await self.node.rt.transport.unsubscribe(channel)
        except ProcessHubError:
            pass

    # ------------------------------------------------------------ renewal

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.node.hs.HEARTBEAT_INTERVAL)
            if not self.fenced:
                await self.heartbeat(self.node.clock.now())

    async def heartbeat(self, sent: float) -> None:
        """One renewal, sent at ``sent`` on the node's clock (taken before the statement leaves)."""
        node, hs = self.node, self.node.hs
        incarnation = node.id
        budget = max(0.05, self.lease.soft - sent)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, dbthreads.call, store.heartbeat,
                                   (incarnation, hs.NODE_TTL, len(node.activations)))
        try:
            ok = await asyncio.wait_for(fut, budget)
        except TimeoutError:
            # The statement hangs (a blackholed link): abandon that thread so the
            # next heartbeat is not queued behind it; the watchdog fences on time.
            logger.warning("processhub: heartbeat of %s hung for %.2fs", node.name, budget)
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
            node.metrics_lease(budget, "hung")
            return
        except DatabaseError as exc:
            logger.warning("processhub: heartbeat of %s failed: %s", node.name, exc)
            node.metrics_lease(node.clock.now() - sent, "error")
            return
        node.metrics_lease(node.clock.now() - sent, "ok" if ok else "refused")
        if incarnation != node.id:
            # The answer is about an incarnation that fenced and was replaced while it was in
            # flight: it says nothing about the current lease.
            return
        if ok:
            self.lease = self.lease.extended(Lease.renewed_at(sent, hs.NODE_TTL, hs.LEASE_SAFETY_MARGIN))
        elif not self.fenced:
            await self.fence("the database says this node's lease ran out")

    async def watchdog_loop(self) -> None:
        while True:
            wait = watchdog_step(self.node.clock.now(), self.lease, self.fenced)
            if wait is None:
                await self.fence("lease not renewed in time")
            else:
                await asyncio.sleep(wait)

    # ------------------------------------------------------------ fencing

    def fence_soon(self, reason: str) -> None:
        if not self.fenced:
            asyncio.ensure_future(self.fence(reason))

    async def fence(self, reason: str) -> None:
        """Lease lost (I3): stop every activation, serve nothing, rejoin under a new incarnation."""
        if self.fenced:
            return
        self.fenced = True
        node = self.node
        old_id, old_channel = node.id, node.channel
        budget = decisions.fence_plan(node.clock.now(), self.lease.hard, False, False).terminate_budget
        logger.warning("processhub: node %s (incarnation %s) fenced: %s; stopping %d processes (%.2fs left for "
                       "terminate)", node.name, old_id, reason, len(node.activations), budget)
        node.starts.fail_all("node lost its lease")
        await node.retire_all("lease lost", budget)
        await self._settle_stuck(old_id)
        node.lifecycle("node_down", reason=reason)
        await self._unsubscribe(old_channel)
        try:
            # Nothing runs here any more: let the others take over now, not at TTL.
            await node.rt.db(store.set_node_status, old_id, DOWN)
            await node.event({"e": "node_down", "node": old_id})
        except (DatabaseError, ProcessHubError) as exc:
            logger.info("processhub: could not mark incarnation %s down (%s); its lease expires anyway", old_id, exc)
        if not node.handoff.draining:
            asyncio.ensure_future(self.rejoin())

    async def _settle_stuck(self, old_id: str) -> None:
        """User code of the fenced incarnation that still runs: wait for it up to the hard deadline, then act."""
        node = self.node
        while node.stuck_user_code():
            plan = decisions.fence_plan(node.clock.now(), self.lease.hard, True, node.exit_on_stuck_user_code)
            if plan.exit_now:
                self._exit(old_id)
            if not node.exit_on_stuck_user_code:
                keys = node.stuck_keys()
                logger.error("processhub: node %s: user code of %d processes still runs after the lease ended (%s); "
                             "they are not started again in this OS process until it returns", node.name, len(keys),
                             ", ".join(f"{k[0]} {k[1]!r}" for k in keys[:5]))
                return
            await asyncio.sleep(min(0.02, plan.terminate_budget))  # it may still return before the lease ends

    def _exit(self, old_id: str) -> None:
        node = self.node
        keys = node.stuck_keys()
        logger.critical("processhub: node %s (incarnation %s) lost its lease while user code it cannot stop is "
                        "still running (%s); ending this OS process so that it cannot run beside the new "
                        "owners (exit status %d: restart it with your process manager)", node.name, old_id,
                        ", ".join(f"{k[0]} {k[1]!r}" for k in keys[:5]), EXIT_STUCK_USER_CODE)
        for handler in logging.getLogger().handlers + logging.getLogger("processhub").handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        sys.stdout.flush()
        os._exit(EXIT_STUCK_USER_CODE)

    async def rejoin(self) -> None:
        if self._rejoining:
            return
        self._rejoining = True
        backoff = 0.1
        node = self.node
        try:
            while self.fenced and not node.handoff.draining:
                try:
                    await self.register()
                    # A fence that landed during the registration found this rejoin in progress
                    # and did not start another: the loop condition sees it and registers again.
                    if not self.fenced:
                        logger.info("processhub: node %s rejoined as incarnation %s", node.name, node.id)
                except (DatabaseError, ProcessHubError, OSError) as exc:
                    logger.warning("processhub: node %s cannot rejoin yet: %s", node.name, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self._rejoining = False

    async def settle_before_leaving(self) -> bool:
        """Before a clean shutdown gives up the lease: True once no user code of this node runs any more.

        A plain ``def`` callback cannot be cancelled, and the lease is what keeps its
        process from starting elsewhere: giving the lease up while one still runs would
        let the next owner start beside it. It gets LEAVE_GRACE more, heartbeats still
        renewing the lease. Then a ``runhub`` node ends its OS process at once, without
        giving the lease up (its processes move when the lease runs out); a node that
        must not end its OS process (embedded) keeps quiet about its lease instead.
        """
        node = self.node
        deadline = node.clock.now() + LEAVE_GRACE
        while node.stuck_user_code() and self.valid() and node.clock.now() < deadline:
            await asyncio.sleep(0.02)
        if not node.stuck_user_code():
            return True
        if node.exit_on_stuck_user_code:
            self._exit(node.id)
        keys = node.stuck_keys()
        logger.error("processhub: node %s: user code of %d processes still runs at shutdown (%s); the node does not "
                     "give up its lease, so they move only when it runs out", node.name, len(keys),
                     ", ".join(f"{k[0]} {k[1]!r}" for k in keys[:5]))
        return False

    async def leave(self, give_up_lease: bool = True) -> None:
        """The end of a clean shutdown: this incarnation serves nothing more and, when it may, says so."""
        node = self.node
        if self.fenced:
            return
        self.fenced = True
        if not give_up_lease:
            node.lifecycle("node_down", reason="shutdown")
            return
        try:
            await node.rt.db(store.set_node_status, node.id, DOWN)
            await node.event({"e": "node_down", "node": node.id})
        except (DatabaseError, ProcessHubError) as exc:
            logger.warning("processhub: could not mark %s down: %s", node.name, exc)
        node.lifecycle("node_down", reason="shutdown")

    def close(self) -> None:
        dbthreads.close_pool_connections(self._pool, 1)
