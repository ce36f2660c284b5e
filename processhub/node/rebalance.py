"""Rebalancing: processes move to the node placement names for them, with handoff, at a bounded rate.

With ``REBALANCE = "active"`` every node, on each reconcile pass, moves the
processes it runs whose rendezvous winner (among the live nodes that are up,
can run the class and have room) is another node: so a node that joins, comes
back after a restart or is undrained fills up again without anybody moving
processes by hand. With ``"passive"`` (the default, Horde's) a node moves
nothing until ``hub.rebalance()`` asks every node for one such sweep.

Bounds: at most ``REBALANCE_RATE`` moves per second in the whole cluster (each
node takes its share), one move of an id at a time (an activation that is
stopping or moving is left alone), never onto a node without the class or at
capacity. Guided processes (started with ``node=``) stay where they were put.
A move is the usual handoff: ``begin_handoff()``, ``terminate("handoff")``,
then ``init()`` and ``end_handoff(state)`` on the new node; calls that arrive
meanwhile wait for it (the client retries while the owner changes).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .. import placement
from ..values import UP, NodeInfo
from .activation import MoveRequest
from .host import NodeParts

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Placed:
    """What rebalancing needs to know about one activation."""

    key: Key
    guided: bool
    busy: bool


def misplaced(activations: Iterable[Placed], live: Sequence[NodeInfo], me: str,
              capacity: int | None) -> list[tuple[Key, NodeInfo]]:
    """(key, target) of the activations here that placement would put on another node (pure)."""
    up = [n for n in live if n.status == UP]
    out = []
    for a in activations:
        if a.guided or a.busy:
            continue
        winner = placement.choose_node(a.key[0], a.key[1], up, capacity)
        if winner is not None and winner.id != me:
            out.append((a.key, winner))
    return out


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (pure, the time is passed in)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, 0.0, now

    def refill(self, now: float, rate: float | None = None) -> None:
        if rate is not None:
            self.rate = rate
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Rebalancer:
    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.sweep_asked = False  # hub.rebalance() on a passive cluster
        self.moved = 0
        self._bucket = TokenBucket(0.0, 1.0, node.clock.now())

    def ask(self) -> None:
        """One sweep, whatever REBALANCE says (``hub.rebalance()``)."""
        self.sweep_asked = True

    def step(self, now: float, live: Sequence[NodeInfo]) -> int:
        """Start the moves this pass may make; returns how many."""
        node, hs = self.node, self.node.hs
        up = [n for n in live if n.status == UP]
        share = hs.REBALANCE_RATE / max(1, len(up))
        # A burst of one pass's worth, at least one move: a node never waits longer than a pass.
        self._bucket.burst = max(1.0, share * max(hs.RECONCILE_INTERVAL, 1.0))
        self._bucket.refill(now, share)
        if not (hs.REBALANCE == "active" or self.sweep_asked) or node.handoff.draining or not up:
            return 0
        acts = node.activations
        todo = misplaced((Placed(k, a.guided, a.busy) for k, a in acts.items()), live, node.id,
                         hs.MAX_PROCESSES_PER_NODE)
        if not todo:
            self.sweep_asked = False
            return 0
        started = 0
        for key, target in todo:
            if not self._bucket.take():
                break
            act = acts.get(key)
            if act is None or act.busy:
                continue
            act.busy = True
            act.post(MoveRequest(future=None, target=target))
            started += 1
        if started:
            self.moved += started
            logger.info("processhub: node %s rebalancing: moving %d of %d processes placed elsewhere now",
                        node.name, started, len(todo))
        return started
