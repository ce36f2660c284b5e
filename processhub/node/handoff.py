"""Drain and moves: a node hands its processes to other nodes, with ``begin_handoff``/``end_handoff`` state.

* ``leave`` (SIGTERM): take no new work, move every process to the live nodes
  that can run it (to nobody when none can: the row waits for the next boot),
  stop what is left, then leave.
* ``drain_in_place`` (admin, ``hub.drain``): take no new processes and move the
  processes to the other nodes, but keep running as ``draining`` until undrained
  or stopped. A drained node still takes processes that no node that is up can
  run (its class is nowhere else, or it is the last node standing): better there
  than "no live node".
* ``undrain``: take new processes again; moves already under way complete.
* ``move_one``: one process to a named node (admin move), fenced by epoch.
"""
from __future__ import annotations

import asyncio
import logging

from django.db import DatabaseError

from .. import placement, store, wire
from ..exceptions import ProcessUnavailable
from ..values import DRAINING, LEAVING, UP, NodeInfo
from .activation import Activation, MoveRequest
from .host import NodeParts

logger = logging.getLogger(__name__)

# Seconds between two progress lines while a node hands many processes off.
PROGRESS_EVERY = 1.0


class Handoff:
    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.draining = False  # takes no new processes (drain in place, or leaving)
        self.leaving = False  # SIGTERM: the node exits afterwards
        self._task: asyncio.Future | None = None

    def refuses(self, label: str) -> str | None:
        """Why this node does not take a new process of class ``label`` now, or None."""
        if self.leaving:
            return "node is shutting down"
        if self.draining and any(n.status == UP and n.id != self.node.id and n.can_run(label)
                                 for n in self.node.reconciler.live):
            return "node is draining"
        return None

    def _others(self, live: list[NodeInfo]) -> list[NodeInfo]:
        return [n for n in live if n.id != self.node.id]

    # ------------------------------------------------------------ SIGTERM

    async def leave(self) -> None:
        """Take no new work, hand every process to the other live nodes, stop the rest, leave."""
        node = self.node
        if self.leaving:
            return
        self.leaving = self.draining = True
        logger.info("processhub: node %s draining %d processes", node.name, len(node.activations))
        node.starts.fail_all("node is shutting down")
        if self._task is not None and not self._task.done():
            # A drain in place is still moving processes: let it finish (bounded) before the rest.
            await asyncio.wait([self._task], timeout=node.hs.SHUTDOWN_TIMEOUT + 1)
        if node.lease_valid():
            try:
                await node.rt.db(store.set_node_status, node.id, LEAVING)
                others = self._others(await node.rt.db(store.live_nodes))
            except DatabaseError as exc:
                logger.warning("processhub: drain of %s cannot reach the database (%s): stopping in place",
                               node.name, type(exc).__name__)
                others = None
            if others is not None:
                await self.hand_off_all(others, keep_unplaced=False)

    # ------------------------------------------------------------ drain in place

    async def drain_in_place(self) -> int:
        """Take no new processes and move every process to the other live nodes; keep running.

        Returns how many processes start to move. Refused with ProcessUnavailable when
        no other live node can take any of them.
        """
        node = self.node
        if self.leaving:
            raise ProcessUnavailable(f"node {node.name} is shutting down")
        others = [n for n in self._others(await node.rt.db(store.live_nodes)) if n.status == UP]
        if not others:
            raise ProcessUnavailable(f"no other live node can take the processes of {node.name}")
        # The row first: from here on placement prefers the nodes that are up.
        await node.rt.db(store.set_node_status, node.id, DRAINING)
        first = not self.draining
        self.draining = True
        count = sum(1 for a in node.activations.values() if not a.busy)
        if first:
            logger.info("processhub: node %s draining in place: moving %d processes away", node.name, count)
            node.lifecycle("node_draining")
            await node.event({"e": "nodes_changed"})
        self._start(others)
        return count

    async def undrain(self) -> None:
        """Take new processes again (after ``drain_in_place``)."""
        node = self.node
        if self.leaving:
            raise ProcessUnavailable(f"node {node.name} is shutting down")
        await node.rt.db(store.set_node_status, node.id, UP)
        if self.draining:
            self.draining = False
            if self._task is not None and not self._task.done():
                self._task.cancel()  # requests already posted complete; no new ones
            logger.info("processhub: node %s undrained: takes new processes again", node.name)
            node.lifecycle("node_undrained")
            await node.event({"e": "nodes_changed"})
        node.reconciler.wake()

    def continue_drain(self) -> None:
        """Called each reconcile pass of a node drained in place: move what arrived since (I6)."""
        if self.leaving or (self._task is not None and not self._task.done()):
            return
        others = [n for n in self._others(self.node.reconciler.live) if n.status == UP]
        if others and any(not a.busy and placement.choose_node(a.label, a.process_id, others) is not None
                          for a in self.node.activations.values()):
            self._start(others)

    def _start(self, others: list[NodeInfo]) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain_rounds(others))

    async def _drain_rounds(self, others: list[NodeInfo]) -> None:
        node = self.node
        # A second round picks up activations whose start was in flight when the drain began.
        for _ in range(2):
            if not node.lease_valid() or self.leaving or not self.draining:
                return
            try:
                await self.hand_off_all(others, keep_unplaced=True)
                others = [n for n in self._others(await node.rt.db(store.live_nodes)) if n.status == UP] or others
            except DatabaseError as exc:
                logger.warning("processhub: drain of %s: %s", node.name, type(exc).__name__)
                return

    # ------------------------------------------------------------ moving

    async def hand_off_all(self, others: list[NodeInfo], keep_unplaced: bool) -> tuple[int, int]:
        """Move every activation here to ``others`` by placement, with handoff; (moved, unanswered).

        A process no node of ``others`` can run stays here when ``keep_unplaced``
        (drain in place), else it goes to nobody: its row waits for the next node to
        boot. Waits at most SHUTDOWN_TIMEOUT + 1 s, logging progress.
        """
        node = self.node
        loop = asyncio.get_running_loop()
        acks = []
        for act in list(node.activations.values()):
            if act.busy:
                continue  # already stopping or moving
            target = placement.choose_node(act.label, act.process_id, others)
            if target is None and keep_unplaced:
                continue
            fut = loop.create_future()
            act.busy = True
            act.post(MoveRequest(future=fut, target=target))
            acks.append(fut)
        if not acks:
            return 0, 0
        deadline = loop.time() + node.hs.SHUTDOWN_TIMEOUT + 1
        pending: set = set(acks)
        while pending and loop.time() < deadline:
            _, pending = await asyncio.wait(pending, timeout=min(PROGRESS_EVERY, max(0.0, deadline - loop.time())))
            if pending:
                logger.info("processhub: node %s handing off: %d of %d done", node.name, len(acks) - len(pending),
                            len(acks))
        moved = sum(1 for f in acks if f.done() and f.result())
        logger.info("processhub: node %s handed off %d processes (%d not moved, %d unanswered)", node.name, moved,
                    len(acks) - moved - len(pending), len(pending))
        return moved, len(pending)

    async def move_one(self, act: Activation, to: str | None, epoch: object,
                       reply_to: str | None, corr: str | None) -> tuple[str, str] | None:
        """Queue a move of ``act`` to the live node ``to`` (an incarnation id).

        None when queued (the activation answers when it moved), else (error code, why).
        """
        node = self.node
        target = None
        if to is not None:
            try:
                target = next((n for n in await node.rt.db(store.live_nodes) if n.id == to), None)
            except DatabaseError as exc:
                return wire.E_UNAVAILABLE, f"database: {type(exc).__name__}"
            if target is None:
                return wire.E_UNAVAILABLE, f"node {to} is not live"
            if not target.can_run(act.label):
                return wire.E_UNAVAILABLE, f"node {target.name} cannot run {act.label}"
        if epoch not in (None, act.epoch) or node.activations.get(act.key) is not act or act.busy:
            return wire.E_NOT_HERE, "epoch changed"
        act.busy = True
        act.post(MoveRequest(reply_to, corr, target=target))
        return None
