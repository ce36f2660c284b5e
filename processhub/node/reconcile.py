"""Reconcile: the node against the database, on a timer, so a lost hint costs latency, never correctness.

Each pass (``step``):

* reads the live nodes, and when the next lease of another node runs out;
* takes over orphans: running rows whose owner is dead or absent, every one of
  them each pass (read in pages, claimed in batches), where this node is the
  rendezvous winner among the nodes that can run the class; rows locked by a
  frozen owner's ``fenced()`` transaction are freed by ending that owner's
  fenced sessions, and rows nobody can run are counted, not retried one by one;
* compares its own rows with what it runs (``decisions.diff_own``): rows naming
  it that it does not run are activated, activations whose row moved on are
  retired. A cheap digest (count, sum of epochs) skips the full read when
  nothing changed; a full read runs at least every FULL_RESYNC_INTERVAL.

Hints (``wake``, ``hint``) only make the next pass or the activation of moved
rows come sooner; the database decides every action.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.db import DatabaseError

from .. import classes, placement, store, wire
from ..logs import Throttled
from ..values import FAILED, STOPPED, NodeInfo, Row, StartSpec
from . import decisions
from .activation import Origin
from .host import NodeParts

logger = logging.getLogger(__name__)

# Reconcile this long after another node's lease is due to run out (failover latency).
EXPIRY_GRACE = 0.05
# Orphan rows read per statement; every page is read on every pass.
ORPHAN_PAGE = 5000
# Activations between two yields to the loop when a pass activates many rows at once.
ACTIVATE_SLICE = 500
# Seconds between two log lines about rows no live node can run.
UNRUNNABLE_LOG_EVERY = 30.0
# Seconds between two starts of a declared singleton that keeps failing.
DECLARED_RETRY = 30.0


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("processhub: starting a declared singleton failed: %r", task.exception())


class Reconciler:
    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.live: list[NodeInfo] = []
        self._poke = asyncio.Event()
        self._full_due = True
        self._last_full = -1e9
        self._peer_expiry_at: float | None = None  # node clock: another node's lease runs out
        self._hinted: set[int] = set()
        self._hint_event = asyncio.Event()
        self._unrunnable_logged = -1e9
        self._declared_tried: dict[tuple[str, str], float] = {}
        self._log = Throttled(logger, UNRUNNABLE_LOG_EVERY)

    # ------------------------------------------------------------ wake-ups

    def wake(self, full: bool = False) -> None:
        self._full_due = self._full_due or full
        self._poke.set()

    def hint(self, row_ids: list[int]) -> None:
        """Rows another node moved here: activate them now rather than at the next pass."""
        if len(self._hinted) < 100_000:
            self._hinted.update(row_ids[: self.node.hs.BATCH_SIZE])
            self._hint_event.set()
        else:
            self.wake()

    # ------------------------------------------------------------ the loops

    async def loop(self) -> None:
        node = self.node
        while True:
            timeout = node.hs.RECONCILE_INTERVAL
            if self._peer_expiry_at is not None:
                # Wake right after another node's lease runs out (if it died, its processes move now);
                # once per reading: the next pass reads the leases again.
                timeout = min(timeout, max(0.0, self._peer_expiry_at - node.clock.now()) + EXPIRY_GRACE)
                self._peer_expiry_at = None
            try:
                await asyncio.wait_for(self._poke.wait(), timeout)
            except TimeoutError:
                pass
            self._poke.clear()
            try:
                await self.step(node.clock.now())
            except DatabaseError as exc:
                logger.warning("processhub: reconcile on %s failed (%s); retrying", node.name, exc)
            except Exception:
                logger.exception("processhub: reconcile on %s failed", node.name)

    async def step(self, now: float) -> None:
        """One pass: live nodes, orphans, own rows."""
        node = self.node
        if not node.lease_valid() or node.handoff.leaving:
            return
        live, expiry = await node.rt.db(store.live_nodes_and_next_expiry, node.id)
        self.live = live
        self._peer_expiry_at = None if expiry is None else now + expiry
        if await node.rt.db(store.mark_expired_nodes_down):
            await node.event({"e": "nodes_changed"})
        await self.take_orphans(live)
        await self.ensure_declared(live)
        full = self._full_due or now - self._last_full > node.hs.FULL_RESYNC_INTERVAL
        if await self.sync_own(full):
            self._last_full = now
            self._full_due = False
        if node.handoff.draining:
            node.handoff.continue_drain()
        else:
            node.rebalancer.step(now, live)

    async def hint_loop(self) -> None:
        """Activate rows other nodes moved here, read back from the database (the hint only says which)."""
        node = self.node
        while True:
            await self._hint_event.wait()
            self._hint_event.clear()
            if not node.lease_valid() or node.handoff.leaving:
                self._hinted.clear()
                continue
            ids = list(self._hinted)[: node.hs.BATCH_SIZE]
            self._hinted.difference_update(ids)
            if self._hinted:
                self._hint_event.set()
            incarnation = node.id
            with node.writes.reading() as read_at:
                try:
                    rows = await node.rt.db(store.rows_owned, incarnation, ids)
                except DatabaseError:
                    self.wake()  # the pass finds them
                    continue
                written = node.writes.written_since(read_at)
            if written is None or not node.current(incarnation):
                self.wake()
                continue
            self._activate_rows(rows, written)

    # ------------------------------------------------------------ orphans

    async def take_orphans(self, live: list[NodeInfo]) -> None:
        """Claim every orphan this node wins (all pages, all dead owners), then activate what it claimed."""
        node = self.node
        incarnation = node.id
        owners = await node.rt.db(store.dead_owners)
        unrunnable = 0
        claimed: list[Row] = []
        for owner in owners:
            if owner is not None:
                # A frozen owner inside fenced() holds its row's lock until its session ends:
                # end it now (its lease is over), so the claims below are not skipped for long.
                await node.rt.db(store.end_fenced_sessions, owner)
            after = 0
            while node.current(incarnation):
                page = await node.rt.db(store.orphans_page, owner, after, ORPHAN_PAGE)
                if not page:
                    break
                after = page[-1].id
                got, nobody = await self._claim_page(owner, page, live, incarnation)
                claimed += got
                unrunnable += nobody
                if len(page) < ORPHAN_PAGE:
                    break
        if unrunnable and node.clock.now() - self._unrunnable_logged > UNRUNNABLE_LOG_EVERY:
            self._unrunnable_logged = node.clock.now()
            logger.error("processhub: %d running processes have no live node that can run their class; they start "
                         "once a node that has it joins", unrunnable)
        # Every claim first, then the activations: the rows are re-owned (and safe from other claimers) as
        # fast as the database allows; the CPU work of starting thousands of activations comes after.
        for j, row in enumerate(claimed):
            if j and j % ACTIVATE_SLICE == 0:
                await asyncio.sleep(0)  # heartbeats and messages get their turn
            if not node.current(incarnation):
                return
            node.activate(row, Origin.TAKEOVER)

    async def _claim_page(self, owner: str | None, page: list[Row], live: list[NodeInfo],
                          incarnation: str) -> tuple[list[Row], int]:
        """Claim (or stop) the rows of one page this node wins: (rows claimed, rows no live node can run)."""
        node = self.node
        claim: list[Row] = []
        stop: list[Row] = []
        unrunnable = 0
        capacity = node.hs.MAX_PROCESSES_PER_NODE
        room = None if capacity is None else max(0, capacity - len(node.activations) - len(node.starts.claiming))
        for row in page:
            winner = placement.choose_node(row.label, row.process_id, live, capacity)
            action = decisions.orphan_action(row.restart, None if winner is None else winner.id, incarnation)
            if action is decisions.OrphanAction.CLAIM:
                if row.key not in node.starts.claiming and row.key not in node.activations and \
                        (room is None or len(claim) < room):
                    claim.append(row)
            elif action is decisions.OrphanAction.STOP:
                stop.append(row)
            elif action is decisions.OrphanAction.UNRUNNABLE:
                unrunnable += 1
        if stop:
            await node.write(store.stop_orphans, [(r.id, r.epoch) for r in stop], owner, STOPPED,
                             "temporary process lost with its node", keys=[r.key for r in stop])
        size = node.hs.BATCH_SIZE
        chunks = [claim[i:i + size] for i in range(0, len(claim), size)]
        # The chunks go out together (the DB threads run them side by side): a takeover of 10,000 rows is
        # a few round trips, not one per chunk, inside its budget. The rows are disjoint.
        results = await asyncio.gather(*(node.write(store.claim, incarnation, [(r.id, r.epoch) for r in chunk],
                                                    keys=[r.key for r in chunk]) for chunk in chunks))
        claimed: list[Row] = [row for got in results for row in got or ()]
        if claimed:
            logger.info("processhub: node %s took over %d processes from %s", node.name, len(claimed),
                        owner or "no node")
            node.lifecycle("took_over", count=len(claimed), from_node=owner)
        return claimed, unrunnable

    # ------------------------------------------------------------ declared singletons

    async def ensure_declared(self, live: list[NodeInfo]) -> None:
        """Start the declared singletons (``autostart``) this node is the rendezvous winner of, when their row
        is missing, stopped or failed (a failed one at most every DECLARED_RETRY seconds)."""
        node = self.node
        declared: dict[tuple[str, str], Any] = {}
        for cls in classes.registered():
            for arg in getattr(cls, "autostart", ()):
                try:
                    declared[(cls.label, wire.check_process_id(cls.process_id(arg), node.hs.MAX_ID_LENGTH))] = arg
                except Exception as exc:  # noqa: BLE001 - a bad declaration must not stop the reconcile
                    self._log.warning("declared", "processhub: %s declares an autostart argument it cannot start "
                                      "(%r): %s", cls.label, arg, exc)
        capacity = node.hs.MAX_PROCESSES_PER_NODE
        mine = [k for k in declared if k not in node.activations and k not in node.starts.claiming
                and (winner := placement.choose_node(k[0], k[1], live, capacity)) is not None and winner.id == node.id]
        if not mine:
            return
        rows = await node.rt.db(store.lookup_many, mine)
        now = node.clock.now()
        for key in mine:
            row = rows.get(key)
            if row is not None and row.status not in (STOPPED, FAILED):
                continue  # running (here, elsewhere, or waiting for a takeover) or passivated: nothing to do
            if row is not None and row.status == FAILED and now - self._declared_tried.get(key, -1e9) < DECLARED_RETRY:
                continue
            self._declared_tried[key] = now
            spec = StartSpec(declared[key], str(classes.get(key[0]).restart))
            logger.info("processhub: node %s starts the declared singleton %s %r", node.name, key[0], key[1])
            asyncio.ensure_future(node.starts.start(key, spec)).add_done_callback(_retrieve)

    # ------------------------------------------------------------ own rows

    async def sync_own(self, full: bool) -> bool:
        """Compare this node's rows with its activations and act; True when a full comparison was made."""
        node = self.node
        writes = node.writes
        incarnation = node.id
        if not full:
            with writes.reading() as read_at:
                count, total = await node.rt.db(store.own_digest, incarnation)
                acts = node.activations
                if count == len(acts) and total == sum(a.epoch for a in acts.values()):
                    return False
                if writes.written_since(read_at) != set():
                    # Our own writes raced the digest (a start burst): a mismatch says nothing, and a full
                    # read of every row here each pass made activation quadratic. Next pass.
                    return False
        with writes.reading() as read_at:
            return await self._sync_rows(read_at, incarnation)

    async def _sync_rows(self, read_at: int, incarnation: str) -> bool:
        """The full comparison, from a read of every row naming this node that began at ``read_at``."""
        node = self.node
        writes = node.writes
        rows = await node.rt.db(store.rows_for, incarnation)
        written = writes.written_since(read_at)
        if written is None or not node.current(incarnation):
            return False  # an untracked write (or a fence) raced the read; look again next pass
        judged = dict(node.activations)
        running = {k: (a.epoch, a.since) for k, a in judged.items()}
        busy = set(node.starts.claiming) | {k for k, a in judged.items() if a.busy} | written
        by_key = {r.key: r for r in rows}
        diff = decisions.diff_own({k: r.epoch for k, r in by_key.items()}, read_at, running, busy)
        for key in diff.kill:
            act = judged[key]
            if node.activations.get(key) is not act:
                continue  # replaced meanwhile: not the activation judged stale
            logger.warning("processhub: %s %r epoch %s no longer belongs to %s; stopping it", key[0], key[1],
                           act.epoch, node.name)
            await node.retire_now(act, "superseded")
        # The retirements were awaited: a start may have activated a row meanwhile, or the node may
        # have fenced; rows written since the read are stale here.
        if not node.current(incarnation):
            return True
        written = writes.written_since(read_at)
        if written is None:
            return True
        await self._activate_slices([by_key[k] for k in diff.activate], read_at, incarnation)
        return True

    async def _activate_slices(self, rows: list[Row], read_at: int, incarnation: str) -> None:
        node = self.node
        for i in range(0, len(rows), ACTIVATE_SLICE):
            if i:
                # 100,000 rows take seconds to activate: let heartbeats, the watchdog and messages in between.
                await asyncio.sleep(0)
            written = node.writes.written_since(read_at)
            if written is None or not node.current(incarnation):
                return
            self._activate_rows(rows[i:i + ACTIVATE_SLICE], written)

    def _activate_rows(self, rows: list[Row], written: set) -> None:
        node = self.node
        labels = classes.labels_set()
        for row in rows:
            key = row.key
            if key[0] in labels and key not in node.activations and key not in node.starts.claiming \
                    and key not in written:
                node.activate(row, Origin.ASSIGNED)
