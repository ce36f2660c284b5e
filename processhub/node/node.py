"""The node: one incarnation of a hub member, its activations, and the parts that keep the promise.

``Node`` itself only holds what every part shares — the incarnation (id and
channel), the table of activations, the write tracker — and wires the parts,
each swappable as a class attribute (as channels' ``runworker`` has
``worker_class``):

* ``lease_class`` (lease.py): registration, heartbeats, watchdog, fence, rejoin;
* ``inbox_class`` (inbox.py): decoding and dispatching what arrives;
* ``starter_class`` (starts.py): group-committed starts;
* ``reconciler_class`` (reconcile.py): orphans, own rows, hints;
* ``handoff_class`` (handoff.py): drain, undrain, moves;
* ``rebalancer_class`` (rebalance.py): moves to where placement puts processes now;
* ``passivator_class`` (passivation.py): idle activations deactivated.

It is also the ``ActivationHost`` its activations see. It never starts an id
while an older activation of that id still runs user code in this OS process
(DESIGN I10): a new activation first waits for the old ones to go quiet.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError

from .. import classes, metrics, signals, wire
from ..conf import hub_settings
from ..exceptions import ProcessHubError
from ..values import NodeInfo, Row
from .activation import Activation, Origin
from .clock import Clock
from .handoff import Handoff
from .inbox import Inbox
from .lease import LeaseKeeper
from .passivation import Passivator
from .rebalance import Rebalancer
from .reconcile import Reconciler
from .starts import StartBatcher
from .writes import WriteTracker

if TYPE_CHECKING:
    from ..runtime import Runtime

logger = logging.getLogger(__name__)

Key = tuple[str, str]

# Registered/unregistered events per published batch (about 150 bytes each, far below MAX_MESSAGE_BYTES).
EVENT_BATCH = 500


class Node:
    lease_class = LeaseKeeper
    inbox_class = Inbox
    starter_class = StartBatcher
    reconciler_class = Reconciler
    handoff_class = Handoff
    rebalancer_class = Rebalancer
    passivator_class = Passivator
    clock_class = Clock

    # A node that finds its lease ended while user code it cannot stop still runs ends its OS
    # process (runhub, a Celery worker hosting a node). The embedded node, the only one of its hub,
    # keeps running instead and starts those ids again only once that code has returned.
    exit_on_stuck_user_code = True

    def __init__(self, rt: Runtime, name: str | None = None, *, clock: Clock | None = None) -> None:
        self.rt = rt
        self.hs = hub_settings()
        self.name = name or self.hs.NODE_NAME or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock or self.clock_class()
        self.handler_pool = rt.handler_pool
        self.id = ""  # the current incarnation
        self.channel = ""
        self.activations: dict[Key, Activation] = {}
        self.retired: dict[Key, list[Activation]] = {}  # ended, but user code of theirs may still run
        self.writes = WriteTracker()
        self.stopped = asyncio.Event()
        self.listeners: list[Callable[..., None]] = [signals.dispatch]
        self._announced: list[dict] = []
        self._lease_tasks: list[asyncio.Task] = []
        self._work_tasks: list[asyncio.Task] = []
        self.lease = self.lease_class(self)
        self.inbox = self.inbox_class(self)
        self.starts = self.starter_class(self)
        self.reconciler = self.reconciler_class(self)
        self.handoff = self.handoff_class(self)
        self.rebalancer = self.rebalancer_class(self)
        self.passivator = self.passivator_class(self)
        metrics.instrument(self)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.lease.register()
        self.rt.node = self
        self._lease_tasks = [asyncio.create_task(c) for c in (self.lease.heartbeat_loop(), self.lease.watchdog_loop())]
        self._work_tasks = [asyncio.create_task(c) for c in (self.reconciler.loop(), self.reconciler.hint_loop(),
                                                             self.starts.loop(), self.passivator.loop())]

    async def drain(self) -> None:
        """SIGTERM: hand every process to the other live nodes, stop the rest, leave (clean shutdown)."""
        if self.stopped.is_set() or self.handoff.leaving:
            return
        await self.handoff.leave()
        for task in self._work_tasks:
            task.cancel()
        # Heartbeats go on while the remaining activations terminate, so nobody takes them over meanwhile,
        # and while user code that cannot be cancelled (a plain def callback) finishes: the lease is given up
        # only once none runs (settle_before_leaving ends a runhub process that cannot get there).
        await self.retire_all("shutdown", None)
        settled = await self.lease.settle_before_leaving()
        for task in self._lease_tasks:
            task.cancel()
        await self.lease.leave(give_up_lease=settled)
        try:
            await self.rt.transport.unsubscribe(self.channel)
        except ProcessHubError:
            pass
        logger.info("processhub: node %s stopped", self.name)
        self.stopped.set()

    async def drain_in_place(self) -> int:
        return await self.handoff.drain_in_place()

    async def undrain(self) -> None:
        await self.handoff.undrain()

    def close(self) -> None:
        """Release the node's own threads (after ``drain``)."""
        self.lease.close()

    # ------------------------------------------------------------ state other parts read

    @property
    def fenced(self) -> bool:
        return self.lease.fenced

    @property
    def draining(self) -> bool:
        return self.handoff.draining

    def lease_valid(self) -> bool:
        return self.lease.valid()

    def current(self, incarnation: str) -> bool:
        """True while the incarnation that issued a claim is still the serving one, with a valid lease.

        A claim that completes after a fence belongs to a dead incarnation: its rows
        will be taken over by others, so activating them here would be a second live
        activation (I1). The lease itself is checked too, not only the fenced flag:
        after a freeze a claim's answer can be handled before the watchdog has noticed.
        """
        return self.id == incarnation and self.lease_valid()

    def activation_counts(self) -> dict[str, int]:
        """Activations running here by class label (metrics)."""
        counts: dict[str, int] = {}
        for act in list(self.activations.values()):
            counts[act.label] = counts.get(act.label, 0) + 1
        return counts

    def fence_soon(self, reason: str) -> None:
        self.lease.fence_soon(reason)

    # ------------------------------------------------------------ the activation table

    def activate(self, row: Row, origin: Origin) -> Activation:
        """Run ``row`` here: a new activation, unless this very one (row, epoch) runs already."""
        old = self.activations.get(row.key)
        if old is not None and old.row_id == row.id and old.epoch == row.epoch:
            return old  # a second instance of one epoch would be a double activation (I1)
        act = Activation(self, self.id, self.channel, classes.get(row.label), row, origin, self.writes.tick())
        if old is not None:
            # Remembered before the new one starts, so that the new one waits for its code to return (I10).
            old.current = False
            self._remember_until_quiet(old)
            self._spawn(self.retire_now(old, "superseded"))
        self.activations[act.key] = act
        act.start()
        return act

    async def retire_now(self, act: Activation, reason: str) -> None:
        """End an activation whose row belongs to another activation now: no terminate (it would be zombie work)."""
        await self._retire(act, reason, 0.0)

    async def retire_all(self, reason: str, terminate_budget: float | None) -> None:
        acts = list(self.activations.values())
        await asyncio.gather(*(self._retire(a, reason, terminate_budget) for a in acts), return_exceptions=True)

    async def _retire(self, act: Activation, reason: str, terminate_budget: float | None) -> None:
        if self.activations.get(act.key) is act:
            del self.activations[act.key]
        act.current = False
        self._remember_until_quiet(act)
        await act.kill(reason, terminate_budget)

    def retire(self, activation: Activation, reason: str, crashed: bool = False) -> None:
        """An activation ended by itself (stopped, moved, failed, gave up): forget it, tell the others."""
        if self.activations.get(activation.key) is activation:
            del self.activations[activation.key]
        activation.current = False
        self._remember_until_quiet(activation)
        self.announce({"e": "unregistered", "l": activation.label, "p": activation.process_id, "n": self.name,
                       "ni": activation.node_id, "epoch": activation.epoch, "reason": reason})
        self.lifecycle("stopped", activation, reason=reason)

    def _remember_until_quiet(self, act: Activation) -> None:
        if act.quiet():
            return
        older = self.retired.setdefault(act.key, [])
        if act not in older:
            older.append(act)
            act.wait_quiet().add_done_callback(functools.partial(self._forget_quiet, act))

    def _forget_quiet(self, act: Activation, _done: object = None) -> None:
        older = self.retired.get(act.key)
        if older and act in older:
            older.remove(act)
            if not older:
                del self.retired[act.key]

    async def wait_quiet(self, activation: Activation) -> None:
        """Wait until no older activation of the same id runs user code in this OS process (I10)."""
        while True:
            older = [a for a in self.retired.get(activation.key, ()) if a is not activation and not a.quiet()]
            if not older:
                return
            logger.info("processhub: %s %r waits for an older activation's code to return before it starts",
                        activation.label, activation.process_id)
            await asyncio.wait([a.wait_quiet() for a in older])

    def stuck_user_code(self) -> bool:
        return any(not a.quiet() for older in self.retired.values() for a in older)

    def stuck_keys(self) -> list[Key]:
        return [k for k, older in self.retired.items() if any(not a.quiet() for a in older)]

    # ------------------------------------------------------------ I/O for the parts

    async def write(self, fn: Callable[..., Any], *args: Any, keys: Any = None) -> Any:
        """A write to this node's own rows, tracked so reconcile can tell its own writes from news.

        ``keys`` are the (label, process_id) the write touches; None means unknown,
        which makes a reconcile pass that overlaps it look again later.
        """
        token = self.writes.begin(keys)
        try:
            return await self.rt.db(fn, *args)
        except DatabaseError as exc:
            logger.warning("processhub: registry write %s failed on %s: %s", fn.__name__, self.name,
                           type(exc).__name__)
            return None
        finally:
            self.writes.end(token)

    async def reply(self, reply_to: str | None, corr: str | None, data: dict) -> None:
        if not reply_to:
            return
        data["t"] = wire.REPLY
        data["id"] = corr
        try:
            await self.rt.transport.publish(reply_to, wire.dumps(data))
        except ProcessHubError as exc:
            logger.warning("processhub: reply to %s lost: %s", reply_to, exc)

    async def reply_error(self, reply_to: str | None, corr: str | None, code: str, msg: str) -> None:
        await self.reply(reply_to, corr, {"ok": False, "err": code, "msg": msg})

    async def event(self, env: dict) -> None:
        env["t"] = wire.EVENT
        try:
            await self.rt.transport.publish(wire.events_channel(self.hs.PREFIX), wire.dumps(env))
        except ProcessHubError as exc:
            logger.debug("processhub: event lost: %s", exc)

    async def write_idle(self, activation: Activation, state: Any) -> bool:
        """A passivated activation's row becomes idle (batched with the others of the moment)."""
        return await self.passivator.write_idle(activation, state)

    def announce(self, env: dict) -> None:
        """A registered/unregistered event: those of one loop turn go out together, as one ``batch`` event.

        A takeover, a drain or a mass passivation touches thousands of processes in a
        few turns; one publish (and one task) per process cost more than the rest of
        their activation.
        """
        self._announced.append(env)
        if len(self._announced) == 1:
            asyncio.get_running_loop().call_soon(self._flush_announced)

    def _flush_announced(self) -> None:
        items, self._announced = self._announced, []
        for i in range(0, len(items), EVENT_BATCH):
            chunk = items[i:i + EVENT_BATCH]
            self._spawn(self.event(chunk[0] if len(chunk) == 1 else {"e": wire.EVENT_BATCH, "items": chunk}))

    async def moved(self, activation: Activation, target: NodeInfo, new_epoch: int) -> None:
        """A process moved to ``target``: tell it (it activates now instead of at its next reconcile)."""
        self.lifecycle("moved", activation, to_node=target.name, new_epoch=new_epoch)
        try:
            await self.rt.transport.publish(target.channel, wire.dumps({"t": wire.ACTIVATE,
                                                                        "ids": [activation.row_id]}))
        except ProcessHubError:
            pass  # the target's reconcile finds the row anyway

    def lifecycle(self, event: str, activation: Activation | None = None, **extra: Any) -> None:
        """One log line per process lifecycle event; listeners (signals, metrics) get the same facts."""
        if event == "started" and activation is not None:
            # Every client and node hears it (best effort): caches learn the new owner, receivers of
            # process_registered keep their local index.
            self.announce({"e": "registered", "l": activation.label, "p": activation.process_id, "n": self.name,
                           "ni": activation.node_id, "epoch": activation.epoch, "c": activation.channel})
        if activation is not None and logger.isEnabledFor(logging.INFO):
            logger.info("processhub: %s %s %r node=%s epoch=%s%s", event, activation.label, activation.process_id,
                        self.name, activation.epoch, "".join(f" {k}={v!r}" for k, v in extra.items()))
        for listener in self.listeners:
            try:
                listener(event, self, activation, **extra)
            except Exception:
                logger.exception("processhub: lifecycle listener failed")

    def metrics_call(self, label: str, seconds: float, kind: str = "call") -> None:
        """Hook for metrics, once per handled call or cast (processhub.metrics replaces it; keep it cheap)."""

    def metrics_lease(self, seconds: float, result: str) -> None:
        """Hook for metrics, once per heartbeat: ok, refused, error or hung (processhub.metrics replaces it)."""

    def _spawn(self, coro: Any) -> None:
        asyncio.ensure_future(coro)


class EmbeddedNode(Node):
    """The node inside a web server process when the hub has only it (no Redis): it never exits."""

    exit_on_stuck_user_code = False


__all__ = ["Node", "EmbeddedNode"]
