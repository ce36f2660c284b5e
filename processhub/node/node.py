"""The per-node supervisor behind ``runhub``: lease, heartbeat, reconcile, routing, drain.

Lifecycle as named operations: ``start`` (register), ``_heartbeat_loop``
(renew), ``fence`` (lease lost: stop everything, rejoin under a new
incarnation), ``drain`` (SIGTERM: hand processes to the other nodes, leave).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError

from . import decisions, metrics, registry, signals, store, wire
from .activation import INFO, MOVE_REQ, STOP_REQ, Slot
from .conf import hub_settings
from .exceptions import InvalidArgument, InvalidMessage, ProcessHubError, ProcessUnavailable, UnknownProcessClass
from .models import NodeStatus, ProcessStatus
from .placement import choose_item
from .transport import FRAMED_SUFFIX

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

# Seconds between two progress lines while a node hands many processes off.
PROGRESS_EVERY = 1.0
# Reconcile this long after another node's lease is due to run out (issue 4: failover).
EXPIRY_GRACE = 0.05
# Activations between two yields to the loop when the reconcile activates many rows at once.
ACTIVATE_SLICE = 500


class Node:
    def __init__(self, rt: Runtime, name: str | None = None) -> None:
        self.rt = rt
        self.hs = hub_settings()
        self.name = name or self.hs.NODE_NAME or f"{socket.gethostname()}-{os.getpid()}"
        self.id = ""
        self.channel = ""
        self.slots: dict[tuple[str, str], Slot] = {}
        self.claiming: dict[tuple[str, str], asyncio.Future] = {}
        self.fenced = True
        self.draining = False  # takes no new processes (SIGTERM drain or drain in place)
        self.leaving = False  # SIGTERM drain: the node exits afterwards
        self._handoff_task: asyncio.Future | None = None
        self.stopped = asyncio.Event()
        self.lease_deadline = 0.0
        self._hb_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="processhub-heartbeat")
        self._tasks: list[asyncio.Task] = []
        self._queue: list[tuple[tuple[str, str], Any, str, asyncio.Future]] = []
        self._queue_event = asyncio.Event()
        self._poke = asyncio.Event()
        self._hinted: set[int] = set()  # row ids other nodes moved here
        self._hint_event = asyncio.Event()
        self._writes = 0
        self._write_gen = 0
        self._unkeyed_writes = 0
        self._inflight: collections.Counter = collections.Counter()
        self._recent_writes: collections.deque = collections.deque(maxlen=4096)
        self._last_full = 0.0
        self._rejoining = False
        self._peer_expiry_at: float | None = None  # monotonic time another node's lease runs out
        self.listeners: list[Callable[..., None]] = [signals.dispatch]
        metrics.instrument(self)

    # ================================================================ lifecycle

    async def start(self) -> None:
        await self._register()
        self.rt.node = self
        for coro in (self._heartbeat_loop(), self._watchdog_loop(), self._reconcile_loop(), self._start_loop(),
                     self._hint_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def _register(self) -> None:
        self.id = uuid.uuid4().hex
        self.channel = f"{self.hs.PREFIX}.node.{self.id}{FRAMED_SUFFIX}"  # read by our transport: frames OK
        await self.rt.transport.subscribe(self.channel, self._on_message)
        sent = time.monotonic()
        await self.rt.db(store.register_node, self.id, self.name, socket.gethostname(), os.getpid(), self.channel,
                         self.hs.NODE_TTL)
        self.lease_deadline = sent + self.hs.NODE_TTL - self.hs.LEASE_SAFETY_MARGIN
        self.fenced = False
        twins = await self.rt.db(store.same_name_live, self.id, self.name)
        if twins:
            # Placement hashes names, so a second live node of this name is invisible to it.
            # A restart faster than NODE_TTL also looks like this, until the old lease runs out.
            logger.warning("processhub: another live node is named %s (%s); node names must be unique",
                           self.name, ", ".join(twins))
        self._last_full = 0.0
        logger.info("processhub: node %s up (incarnation %s)", self.name, self.id)
        self.lifecycle("node_up")
        await self._event({"e": "node_up", "node": self.id})
        self._poke.set()

    def lease_valid(self) -> bool:
        return not self.fenced and time.monotonic() < self.lease_deadline

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.hs.HEARTBEAT_INTERVAL)
            if self.fenced:
                continue
            sent = time.monotonic()
            incarnation = self.id
            budget = max(0.05, self.lease_deadline - sent)
            fut = loop.run_in_executor(self._hb_pool, _db_call, store.heartbeat, (incarnation, self.hs.NODE_TTL))
            try:
                ok = await asyncio.wait_for(fut, budget)
            except TimeoutError:
                # The statement hangs (a blackholed link): abandon that thread so the
                # next heartbeat is not queued behind it; the watchdog fences on time.
                logger.warning("processhub: heartbeat of %s hung for %.2fs", self.name, budget)
                self._hb_pool.shutdown(wait=False)
                self._hb_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="processhub-heartbeat")
                self.metrics_lease(budget, "hung")
                continue
            except DatabaseError as exc:
                logger.warning("processhub: heartbeat of %s failed: %s", self.name, exc)
                self.metrics_lease(time.monotonic() - sent, "error")
                continue
            self.metrics_lease(time.monotonic() - sent, "ok" if ok else "refused")
            if incarnation != self.id:
                # The answer is about an incarnation that fenced and was replaced while it was in
                # flight: it says nothing about the current lease (a refusal once fenced the new one).
                continue
            if ok:
                self.lease_deadline = max(self.lease_deadline, sent + self.hs.NODE_TTL - self.hs.LEASE_SAFETY_MARGIN)
            elif not self.fenced:
                await self.fence("the database says this node's lease ran out")

    async def _watchdog_loop(self) -> None:
        while True:
            if self.fenced:
                await asyncio.sleep(0.05)
                continue
            left = self.lease_deadline - time.monotonic()
            if left > 0:
                await asyncio.sleep(min(left, 0.5))
                continue
            await self.fence("lease not renewed in time")

    def fence_soon(self, reason: str) -> None:
        if not self.fenced:
            asyncio.ensure_future(self.fence(reason))

    async def fence(self, reason: str) -> None:
        """Lease lost (I3): stop every activation, serve nothing, rejoin under a new incarnation."""
        if self.fenced:
            return
        self.fenced = True
        old_id, old_channel = self.id, self.channel
        logger.warning("processhub: node %s (incarnation %s) fenced: %s; stopping %d processes", self.name, old_id,
                       reason, len(self.slots))
        slots = list(self.slots.values())
        self.slots.clear()
        for fut in self.claiming.values():
            if not fut.done():
                fut.set_result(("error", wire.E_FENCED, "node lost its lease"))
        self.claiming.clear()
        # Starts still queued for the batcher belong to the old incarnation too: answer them
        # now, or a retry queued after the rejoin would put the same key twice in one batch.
        queued, self._queue = self._queue, []
        for _, _, _, fut in queued:
            if not fut.done():
                fut.set_result(("error", wire.E_FENCED, "node lost its lease"))
        timeout = min(1.0, self.hs.SHUTDOWN_TIMEOUT)
        await asyncio.gather(*(s.kill("lease lost", timeout) for s in slots), return_exceptions=True)
        self.lifecycle("node_down", reason=reason)
        try:
            await self.rt.transport.unsubscribe(old_channel)
        except ProcessHubError:
            pass
        try:
            # Nothing runs here any more: let the others take over now, not at TTL.
            await self.rt.db(store.set_node_status, old_id, NodeStatus.DOWN)
            await self._event({"e": "node_down", "node": old_id})
        except (DatabaseError, ProcessHubError) as exc:
            logger.info("processhub: could not mark incarnation %s down (%s); its lease expires anyway", old_id, exc)
        if not self.draining:
            asyncio.ensure_future(self._rejoin())

    async def _rejoin(self) -> None:
        if self._rejoining:
            return
        self._rejoining = True
        backoff = 0.1
        try:
            while self.fenced and not self.draining:
                try:
                    await self._register()
                    # A fence that landed during the registration found this rejoin in progress
                    # and did not start another: the loop condition sees it and registers again.
                    if not self.fenced:
                        logger.info("processhub: node %s rejoined as incarnation %s", self.name, self.id)
                except (DatabaseError, ProcessHubError, OSError) as exc:
                    logger.warning("processhub: node %s cannot rejoin yet: %s", self.name, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self._rejoining = False

    async def drain(self) -> None:
        """SIGTERM: take no new work, hand every process to the other live nodes, then leave."""
        if self.leaving:
            return
        self.leaving = True
        self.draining = True
        logger.info("processhub: node %s draining %d processes", self.name, len(self.slots))
        if self._handoff_task is not None and not self._handoff_task.done():
            # A drain in place is still moving processes: let it finish (bounded) before the rest.
            await asyncio.wait([self._handoff_task], timeout=self.hs.SHUTDOWN_TIMEOUT + 1)
        if not self.fenced:
            try:
                await self.rt.db(store.set_node_status, self.id, NodeStatus.DRAINING)
                others = [n for n in await self.rt.db(store.live_nodes) if n.id != self.id]
            except DatabaseError as exc:
                logger.warning("processhub: drain of %s cannot reach the database (%s): stopping in place",
                               self.name, exc)
                others = None
            if others is not None:
                await self.hand_off_all(others)
        for task in self._tasks:
            task.cancel()
        slots = list(self.slots.values())
        self.slots.clear()
        await asyncio.gather(*(s.kill("shutdown", self.hs.SHUTDOWN_TIMEOUT) for s in slots), return_exceptions=True)
        if not self.fenced:
            self.fenced = True
            try:
                await self.rt.db(store.set_node_status, self.id, NodeStatus.DOWN)
                await self._event({"e": "node_down", "node": self.id})
            except (DatabaseError, ProcessHubError) as exc:
                logger.warning("processhub: could not mark %s down: %s", self.name, exc)
            self.lifecycle("node_down", reason="shutdown")
        try:
            await self.rt.transport.unsubscribe(self.channel)
        except ProcessHubError:
            pass
        logger.info("processhub: node %s stopped", self.name)
        self.stopped.set()

    async def drain_in_place(self) -> int:
        """Admin drain: take no new processes and hand every process to the other live nodes, but keep running
        and heartbeating with status draining until stopped. Returns how many processes start to move.

        Refused with ProcessUnavailable when no other node is live: the processes would have nowhere to go.
        """
        if self.leaving:
            raise ProcessUnavailable(f"node {self.name} is shutting down")
        others = [n for n in await self.rt.db(store.live_nodes) if n.id != self.id]
        if not others:
            raise ProcessUnavailable(f"no other live node can take the processes of {self.name}")
        # The row first: from here on store.live_nodes leaves this node out of placement,
        # and insert_new/claim refuse it (they require status 'up').
        await self.rt.db(store.set_node_status, self.id, NodeStatus.DRAINING)
        first = not self.draining
        self.draining = True
        count = sum(1 for s in self.slots.values() if not s.busy)
        if first:
            logger.info("processhub: node %s draining in place: moving %d processes away", self.name, count)
            self.lifecycle("node_draining")
            await self._event({"e": "nodes_changed"})
        if self._handoff_task is None or self._handoff_task.done():
            self._handoff_task = asyncio.ensure_future(self._hand_off_in_place(others))
        return count

    async def _hand_off_in_place(self, others: list[store.NodeInfo]) -> None:
        # A second pass picks up activations whose start was in flight when the drain began.
        for _ in range(2):
            if self.fenced or self.leaving or not any(not s.busy for s in self.slots.values()):
                return
            try:
                await self.hand_off_all(others)
                others = [n for n in await self.rt.db(store.live_nodes) if n.id != self.id] or others
            except DatabaseError as exc:
                logger.warning("processhub: drain of %s: %s", self.name, exc)
                return

    async def hand_off_all(self, others: list[store.NodeInfo]) -> tuple[int, int]:
        """Move every activation here to ``others`` by rendezvous (to nobody when empty), with handoff.

        Shared by ``drain`` (SIGTERM) and ``drain_in_place`` (admin). Waits at most
        SHUTDOWN_TIMEOUT + 1 s, logging progress; returns (moved, unanswered).
        """
        loop = asyncio.get_running_loop()
        acks = []
        for slot in list(self.slots.values()):
            if slot.busy:
                continue  # already stopping or moving
            target = choose_item(f"{slot.label}:{slot.process_id}", others, lambda n: n.name)
            fut = loop.create_future()
            slot.busy = True
            slot.post((MOVE_REQ, target, None, fut))
            acks.append(fut)
        if not acks:
            return 0, 0
        deadline = loop.time() + self.hs.SHUTDOWN_TIMEOUT + 1
        pending: set = set(acks)
        while pending and loop.time() < deadline:
            _, pending = await asyncio.wait(pending, timeout=min(PROGRESS_EVERY, max(0.0, deadline - loop.time())))
            if pending:
                logger.info("processhub: node %s handing off: %d of %d done", self.name, len(acks) - len(pending),
                            len(acks))
        moved = sum(1 for f in acks if f.done() and f.result())
        logger.info("processhub: node %s handed off %d processes (%d not moved, %d unanswered)", self.name, moved,
                    len(acks) - moved - len(pending), len(pending))
        return moved, len(pending)

    # ================================================================ plumbing

    async def invoke(self, fn: Callable, *args: Any) -> Any:
        """Await an async callback, or run a plain ``def`` one in a worker thread."""
        if asyncio.iscoroutinefunction(fn):
            return await fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.rt.handler_pool, _db_call, fn, args)

    async def write(self, fn: Callable, *args: Any, keys: list | tuple | None = None) -> Any:
        """A write to this node's own rows, recorded so reconcile can tell its own writes from news.

        ``keys`` are the (label, process_id) the write touches; None means unknown,
        which makes a reconcile pass that overlaps it give up (DESIGN: pure diff over a
        consistent read).
        """
        if keys is None:
            self._unkeyed_writes += 1
        else:
            self._inflight.update(keys)
        self._writes += 1
        try:
            return await self.rt.db(fn, *args)
        except DatabaseError:
            logger.exception("processhub: registry write %s failed on %s", fn.__name__, self.name)
            return None
        finally:
            self._writes -= 1
            if keys is None:
                self._unkeyed_writes -= 1
            else:
                self._inflight.subtract(keys)
            self._write_gen += 1
            self._recent_writes.append((self._write_gen, None if keys is None else frozenset(keys)))

    def _written_since(self, gen: int) -> set | None:
        """Keys written (or being written) since write generation ``gen``; None when unknown."""
        if self._unkeyed_writes:
            return None
        out = {k for k, n in self._inflight.items() if n > 0}
        if gen == self._write_gen:
            return out
        if not self._recent_writes or self._recent_writes[0][0] > gen + 1:
            return None  # older than the history we keep
        for g, keys in self._recent_writes:
            if g > gen:
                if keys is None:
                    return None
                out |= keys
        return out

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

    async def ack(self, item: tuple, ok: bool) -> None:
        _, _, reply_to, corr = item
        if isinstance(corr, asyncio.Future):
            if not corr.done():
                corr.set_result(ok)
        elif reply_to:
            await self.reply(reply_to, corr, {"ok": ok} if ok else {"ok": False, "err": wire.E_NOT_HERE,
                                                                     "msg": "not moved"})

    async def _event(self, env: dict) -> None:
        env["t"] = wire.EVENT
        try:
            await self.rt.transport.publish(f"{self.hs.PREFIX}.events", wire.dumps(env))
        except ProcessHubError as exc:
            logger.debug("processhub: event lost: %s", exc)

    async def hint_activate(self, target: store.NodeInfo, row_id: int | None = None) -> None:
        """Tell ``target`` a row was moved to it, so it activates now instead of at its next reconcile."""
        env: dict[str, Any] = {"t": wire.ACTIVATE}
        if row_id is not None:
            env["ids"] = [row_id]
        try:
            await self.rt.transport.publish(target.channel, wire.dumps(env))
        except ProcessHubError:
            pass  # the target's reconcile finds the row anyway

    async def _hint_loop(self) -> None:
        """Activate rows other nodes moved here (drain, admin move), read back from the database.

        The hint only says which rows to look at; the database decides: a row is
        activated only if it names this incarnation, and never from a read that one
        of our own writes to the same key overlapped (same rule as ``_sync_own``).
        """
        while True:
            await self._hint_event.wait()
            self._hint_event.clear()
            if not self.lease_valid() or self.leaving:
                self._hinted.clear()
                continue
            ids = list(self._hinted)[: self.hs.BATCH_SIZE]
            self._hinted.difference_update(ids)
            if self._hinted:
                self._hint_event.set()
            incarnation, gen = self.id, self._write_gen
            try:
                rows = await self.rt.db(store.rows_owned, incarnation, ids)
            except DatabaseError:
                self._poke.set()  # let the reconcile find them
                continue
            written = self._written_since(gen)
            if written is None or not self._current(incarnation):
                self._poke.set()
                continue
            labels = registry.labels_set()
            for r in rows:
                key = (r.label, r.process_id)
                if key[0] in labels and key not in written and key not in self.claiming and key not in self.slots:
                    self._activate(r)

    def forget(self, slot: Slot, reason: str, crashed: bool = False) -> None:
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        asyncio.ensure_future(self._event({"e": "unregistered", "l": slot.label, "p": slot.process_id,
                                           "epoch": slot.epoch}))
        self.lifecycle("stopped", slot, reason=reason)

    def lifecycle(self, event: str, slot: Slot | None = None, **extra: Any) -> None:
        """One log line per process lifecycle event; listeners (signals, metrics) get the same facts."""
        if slot is not None and logger.isEnabledFor(logging.INFO):
            logger.info("processhub: %s %s %r node=%s epoch=%s%s", event, slot.label, slot.process_id, self.name,
                        slot.epoch, "".join(f" {k}={v!r}" for k, v in extra.items()))
        for listener in self.listeners:
            try:
                listener(event, self, slot, **extra)
            except Exception:
                logger.exception("processhub: lifecycle listener failed")

    def metrics_call(self, label: str, seconds: float, kind: str = "call") -> None:
        """Hook for metrics, once per handled call or cast (processhub.metrics replaces it; keep it cheap)."""

    def metrics_lease(self, seconds: float, result: str) -> None:
        """Hook for metrics, once per heartbeat: ok, refused, error or hung (processhub.metrics replaces it)."""

    # ================================================================ messages

    def _on_message(self, data: bytes) -> None:
        try:
            env = wire.loads(data)
            kind = env["t"]
            if kind == wire.ACTIVATE:
                ids = env.get("ids")
                if (isinstance(ids, list) and len(self._hinted) < 100_000
                        and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
                    self._hinted.update(ids[: self.hs.BATCH_SIZE])
                    self._hint_event.set()
                else:
                    self._poke.set()
                return
            reply_to = env.get("r")
            corr = env.get("id")
            if reply_to is not None and not isinstance(reply_to, str) or corr is not None and not isinstance(corr, str):
                raise InvalidMessage("'r' and 'id' must be strings")
            if kind not in (wire.START, wire.CALL, wire.CAST, wire.STOP, wire.MOVE, wire.DRAIN):
                raise InvalidMessage(f"unknown envelope kind {kind!r}")
            key = (wire.field(env, "l", str), wire.field(env, "p", str)) if kind != wire.DRAIN else ("", "")
        except (InvalidMessage, UnicodeDecodeError) as exc:
            logger.warning("processhub: node %s rejected a malformed message: %s", self.name, exc)
            self._reply_invalid(data, str(exc))
            return
        if not self.lease_valid():
            if reply_to:
                asyncio.ensure_future(self.reply_error(reply_to, corr, wire.E_FENCED, "node has no valid lease"))
            if not self.fenced:
                self.fence_soon("lease ran out")
            return
        if kind == wire.START:
            asyncio.ensure_future(self._handle_start(env, key, reply_to, corr))
            return
        if kind == wire.DRAIN:
            asyncio.ensure_future(self._handle_drain(reply_to, corr))
            return
        slot = self.slots.get(key)
        if slot is None or slot.busy:
            if reply_to:
                asyncio.ensure_future(self.reply_error(reply_to, corr, wire.E_NOT_HERE,
                                                       f"{key[0]} {key[1]!r} is not running on {self.name}"))
            else:
                logger.info("processhub: cast to %s %r dropped: not running on %s", key[0], key[1], self.name)
            return
        if kind == wire.CALL:
            if "m" not in env:
                asyncio.ensure_future(self.reply_error(reply_to, corr, wire.E_INVALID, "call without 'm'"))
                return
            ttl = env.get("ttl")
            if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0):
                # A caller sends its remaining time; anything else would be silently dropped below.
                logger.warning("processhub: node %s rejected a call with ttl %r", self.name, ttl)
                asyncio.ensure_future(self.reply_error(reply_to, corr, wire.E_INVALID,
                                                       "'ttl' must be a positive number"))
                return
            deadline = time.monotonic() + ttl if ttl is not None else None
            slot.post((wire.CALL, env["m"], reply_to, corr, deadline))
        elif kind == wire.CAST:
            slot.post((wire.CAST, env.get("m")))
        elif kind == wire.STOP:
            slot.busy = True
            slot.post((STOP_REQ, None, reply_to, corr))
        elif kind == wire.MOVE:
            asyncio.ensure_future(self._handle_move(slot, env, reply_to, corr))

    def _reply_invalid(self, data: bytes, msg: str) -> None:
        # Answer a malformed request when it says where to, so its sender learns why.
        try:
            import json

            env = json.loads(data)
            reply_to, corr = env.get("r"), env.get("id")
        except (ValueError, AttributeError, TypeError, UnicodeDecodeError):
            return
        if isinstance(reply_to, str) and isinstance(corr, str):
            asyncio.ensure_future(self.reply_error(reply_to, corr, wire.E_INVALID, msg))

    async def _handle_drain(self, reply_to, corr) -> None:
        try:
            count = await self.drain_in_place()
        except ProcessUnavailable as exc:
            await self.reply_error(reply_to, corr, wire.E_UNAVAILABLE, str(exc))
            return
        except DatabaseError as exc:
            await self.reply_error(reply_to, corr, wire.E_UNAVAILABLE, f"database: {exc}")
            return
        await self.reply(reply_to, corr, {"ok": True, "n": count})

    async def _handle_move(self, slot: Slot, env: dict, reply_to, corr) -> None:
        to = env.get("to")
        target = None
        if to is not None:
            try:
                target = next((n for n in await self.rt.db(store.live_nodes) if n.id == to), None)
            except DatabaseError as exc:
                await self.reply_error(reply_to, corr, wire.E_UNAVAILABLE, f"database: {exc}")
                return
            if target is None:
                await self.reply_error(reply_to, corr, wire.E_UNAVAILABLE, f"node {to} is not live")
                return
        if env.get("e") not in (None, slot.epoch) or self.slots.get(slot.key) is not slot or slot.busy:
            await self.reply_error(reply_to, corr, wire.E_NOT_HERE, "epoch changed")
            return
        slot.busy = True
        slot.post((MOVE_REQ, target, reply_to, corr))

    # ================================================================ start

    async def _handle_start(self, env: dict, key: tuple[str, str], reply_to, corr) -> None:
        try:
            result = await self._start_one(env, key)
        except (InvalidMessage, UnknownProcessClass) as exc:
            code = wire.E_UNKNOWN_CLASS if isinstance(exc, UnknownProcessClass) else wire.E_INVALID
            logger.warning("processhub: node %s refused a start: %s", self.name, exc)
            await self.reply_error(reply_to, corr, code, str(exc))
            return
        await self.reply(reply_to, corr, result)

    async def _start_one(self, env: dict, key: tuple[str, str]) -> dict:
        cls = registry.get(key[0])
        arg = env.get("a")
        try:
            # The client checks these too; a raw message may not have (I8). An unstorable id or
            # argument would fail the whole group-committed INSERT of every start batched with it.
            wire.check_process_id(key[1], self.hs.MAX_ID_LENGTH)
            wire.check_storable(arg, "start argument")
        except InvalidArgument as exc:
            raise InvalidMessage(str(exc)) from None
        try:
            pid = cls.process_id(arg)
        except Exception as exc:
            raise InvalidMessage(f"{key[0]}.process_id() raised {exc!r}") from None
        if pid != key[1]:
            raise InvalidMessage(f"process id {key[1]!r} does not match process_id(arg) = {pid!r}")
        for _ in range(5):
            # Checked on every round: a drain may begin while this start waits for its batch.
            if self.draining:
                return {"ok": False, "err": wire.E_FENCED, "msg": "node is draining"}
            slot = self.slots.get(key)
            if slot is not None and not slot.busy:
                return await self._when_ready(slot, created=False)
            fut = self.claiming.get(key)
            if fut is None:
                fut = self.claiming[key] = asyncio.get_running_loop().create_future()
                self._queue.append((key, arg, cls.restart, fut))
                self._queue_event.set()
                first = True
            else:
                first = False
            outcome = await asyncio.shield(fut)
            kind = outcome[0]
            if kind == "slot":
                return await self._when_ready(outcome[1], created=first and outcome[2])
            if kind == "ref":
                return {"ok": True, "ref": outcome[1].as_wire(), "created": False}
            if kind == "error":
                return {"ok": False, "err": outcome[1], "msg": outcome[2]}
            # "retry": the row changed under us; decide again.
        return {"ok": False, "err": wire.E_UNAVAILABLE, "msg": "start kept racing; try again"}

    async def _when_ready(self, slot: Slot, created: bool) -> dict:
        try:
            await asyncio.shield(slot.ready)
        except asyncio.CancelledError:
            return {"ok": False, "err": wire.E_NOT_HERE, "msg": "activation was stopped"}
        except Exception as exc:
            return {"ok": False, "err": wire.E_CRASHED, "msg": f"init failed: {exc}",
                    "exc_type": getattr(exc, "exc_type", type(exc).__name__), "tb": getattr(exc, "tb", "")}
        return {"ok": True, "ref": slot.ref(created).as_wire(), "created": created}

    async def _start_loop(self) -> None:
        """Group commit: every start waiting here goes into one INSERT (DESIGN: activation rate)."""
        while True:
            await self._queue_event.wait()
            self._queue_event.clear()
            while self._queue:
                batch, self._queue = self._queue[: self.hs.BATCH_SIZE], self._queue[self.hs.BATCH_SIZE:]
                try:
                    await self._start_batch(batch)
                except Exception as exc:
                    logger.exception("processhub: start batch failed on %s", self.name)
                    for key, _, _, fut in batch:
                        if self.claiming.get(key) is fut:
                            del self.claiming[key]
                        if not fut.done():
                            fut.set_result(("error", wire.E_UNAVAILABLE, f"start failed: {exc}"))

    async def _start_batch(self, batch: list) -> None:
        # Answered entries (a fence answered them) are dropped; one entry per key, so a key can
        # never be activated twice from one batch.
        unique: dict[tuple[str, str], tuple] = {}
        for entry in batch:
            if not entry[3].done() and entry[0] not in unique:
                unique[entry[0]] = entry
        for entry in batch:
            if not entry[3].done() and unique.get(entry[0]) is not entry:
                entry[3].set_result(("retry",))
        batch = list(unique.values())
        if not batch:
            return
        if not self.lease_valid():
            for key, _, _, fut in batch:
                if self.claiming.get(key) is fut:
                    del self.claiming[key]
                fut.set_result(("error", wire.E_FENCED, "node has no valid lease"))
            return
        items = [(k[0], k[1], arg, restart) for k, arg, restart, _ in batch]
        incarnation = self.id
        inserted = await self.write(store.insert_new, incarnation, items, keys=[k for k, *_ in batch])
        if inserted is None:
            inserted = {}
        for key, arg, restart, fut in batch:
            row_id = inserted.get(key)
            if not self._current(incarnation):
                outcome = ("error", wire.E_FENCED, "node lost its lease while starting")
            elif row_id is not None:
                slot = self._activate(store.Row(row_id, key[0], key[1], arg, 1, restart, None))
                outcome = ("slot", slot, True)
            else:
                outcome = await self._start_existing(key, arg)
            if self.claiming.get(key) is fut:
                del self.claiming[key]
            if not fut.done():
                fut.set_result(outcome)

    async def _start_existing(self, key: tuple[str, str], arg: Any) -> tuple:
        """The row exists: join it, take it over, or restart it, depending on its state."""
        from .client import ProcessRef

        try:
            row = await self.rt.db(store.lookup_row, *key)
        except DatabaseError as exc:
            return ("error", wire.E_UNAVAILABLE, f"database: {exc}")
        if row is None:
            return ("retry",)
        status, rid, epoch, node_id, name, channel, alive = row
        incarnation = self.id
        if status == ProcessStatus.RUNNING and node_id == incarnation:
            slot = self.slots.get(key)
            if slot is None:
                rows = await self.rt.db(store.rows_by_id, [rid])
                if not rows or rows[0].epoch != epoch:
                    return ("retry",)
                if not self._current(incarnation):
                    return ("error", wire.E_FENCED, "node lost its lease while starting")
                slot = self.slots.get(key) or self._activate(rows[0])
            return ("slot", slot, False)
        if status == ProcessStatus.RUNNING and alive:
            return ("ref", ProcessRef(key[0], key[1], name, node_id, epoch, False, channel))
        # Owner dead or absent, or the process was stopped/failed: claim it (epoch+1).
        restarting = status != ProcessStatus.RUNNING
        got = await self.write(store.claim, incarnation, [(rid, epoch)], restarting, arg if restarting else None,
                               keys=[key])
        if not got:
            return ("retry",)
        if not self._current(incarnation):
            return ("error", wire.E_FENCED, "node lost its lease while starting")
        return ("slot", self._activate(got[0]), True)

    def _current(self, incarnation: str) -> bool:
        """True while the incarnation that issued a claim is still the serving one.

        A claim that completes after a fence belongs to a dead incarnation: its row
        will be taken over by others, so activating it here would be a second live
        activation (I1). Checked synchronously right before activating. The lease
        itself is checked too, not only the fenced flag: after a freeze (SIGSTOP, GC)
        a claim's answer can be handled before the watchdog has noticed the expiry.
        """
        return self.id == incarnation and self.lease_valid()

    def _activate(self, row: store.Row) -> Slot:
        cls = registry.get(row.label)
        old = self.slots.get((row.label, row.process_id))
        if old is not None and old.row_id == row.id and old.epoch == row.epoch:
            return old  # already running this very activation: a second one would be a double (I1)
        slot = Slot(self, cls, row)
        if old is not None:
            asyncio.ensure_future(old.kill("superseded", 1.0))
        self.slots[slot.key] = slot
        slot.start()
        return slot

    # ================================================================ reconcile

    async def _reconcile_loop(self) -> None:
        while True:
            timeout = self.hs.RECONCILE_INTERVAL
            if self._peer_expiry_at is not None:
                # Wake right after another node's lease runs out (if it dies, its processes move now);
                # once per reading: the next reconcile reads the leases again.
                timeout = min(timeout, max(0.0, self._peer_expiry_at - time.monotonic()) + EXPIRY_GRACE)
                self._peer_expiry_at = None
            try:
                await asyncio.wait_for(self._poke.wait(), timeout)
            except TimeoutError:
                pass
            self._poke.clear()
            if not self.lease_valid() or self.leaving:
                continue
            try:
                if self.draining:
                    await self._reconcile_draining()
                else:
                    await self.reconcile()
            except DatabaseError as exc:
                logger.warning("processhub: reconcile on %s failed (%s); retrying", self.name, exc)
            except Exception:
                logger.exception("processhub: reconcile on %s failed", self.name)

    async def _reconcile_draining(self) -> None:
        """A node drained in place takes no orphans, but rows still naming it (a move that
        failed, a start that landed as the drain began) must run somewhere: run them here,
        then hand them off again (I6)."""
        await self._sync_own()
        if any(not s.busy for s in self.slots.values()) and (
                self._handoff_task is None or self._handoff_task.done()):
            others = [n for n in await self.rt.db(store.live_nodes) if n.id != self.id]
            if others:
                self._handoff_task = asyncio.ensure_future(self._hand_off_in_place(others))

    async def reconcile(self) -> None:
        asked = time.monotonic()
        live, expiry = await self.rt.db(store.live_nodes_and_next_expiry, self.id)
        self._peer_expiry_at = None if expiry is None else asked + expiry
        if await self.rt.db(store.mark_expired_nodes_down):
            await self._event({"e": "nodes_changed"})
        await self._take_orphans(live)
        await self._sync_own()

    async def _take_orphans(self, live: list[store.NodeInfo]) -> None:
        owners: list[str | None] = [*await self.rt.db(store.dead_nodes_owning_processes), None]
        for owner in owners:
            rows = await self.rt.db(store.rows_for, owner, self.hs.BATCH_SIZE * 4)
            claim, stop = [], []
            for r in rows:
                winner = choose_item(f"{r.label}:{r.process_id}", live, lambda n: n.name)
                action = decisions.orphan_action(r.restart, winner is not None and winner.id == self.id)
                if action == "claim" and (r.label, r.process_id) not in self.claiming:
                    if r.label in registry.labels_set():
                        claim.append(r)
                    else:
                        logger.error("processhub: cannot take over %s %r: class %s is not registered on %s",
                                     r.label, r.process_id, r.label, self.name)
                elif action == "stop":
                    stop.append(r)
            for r in stop:
                await self.write(store.finish, r.id, owner, r.epoch, ProcessStatus.STOPPED,
                                 "temporary process lost with its node", keys=[(r.label, r.process_id)])
            for i in range(0, len(claim), self.hs.BATCH_SIZE):
                chunk = claim[i:i + self.hs.BATCH_SIZE]
                if not self.lease_valid():
                    return
                incarnation = self.id
                got = await self.write(store.claim, incarnation, [(r.id, r.epoch) for r in chunk],
                                       keys=[(r.label, r.process_id) for r in chunk]) or []
                if not self._current(incarnation):
                    return
                for row in got:
                    self._activate(row)
                if got:
                    logger.info("processhub: node %s took over %d processes from %s (%d running here)", self.name,
                                len(got), owner or "no node", len(self.slots))
                    self.lifecycle("took_over", count=len(got), from_node=owner)

    async def _sync_own(self) -> None:
        gen = self._write_gen
        now = time.monotonic()
        full = now - self._last_full > self.hs.FULL_RESYNC_INTERVAL
        mine = {k: s.epoch for k, s in self.slots.items()}
        if not full:
            count, total = await self.rt.db(store.own_digest, self.id)
            if count == len(mine) and total == sum(mine.values()):
                return
            if self._written_since(gen) != set():
                # Our own writes raced the digest (a start burst): a mismatch says nothing, and a full
                # read of every row here each second made activation quadratic (issue 4). Next time.
                return
        incarnation = self.id
        rows = await self.rt.db(store.rows_for, incarnation, 10_000_000)
        written = self._written_since(gen)
        if written is None or not self._current(incarnation):
            return  # an untracked write (or a fence) raced the read; look again next time
        self._last_full = now
        by_key = {(r.label, r.process_id): r for r in rows}
        judged = dict(self.slots)
        mine = {k: s.epoch for k, s in judged.items()}
        # Keys our own writes touched during the read are judged next time, not from this read.
        busy = set(self.claiming) | {k for k, s in judged.items() if s.busy} | written
        diff = decisions.diff_own({k: r.epoch for k, r in by_key.items()}, mine, busy)
        for key in diff.kill:
            slot = judged[key]
            if self.slots.get(key) is not slot:
                continue  # replaced while an earlier kill was awaited: not the activation judged stale
            del self.slots[key]
            logger.warning("processhub: %s %r epoch %s no longer belongs to %s; stopping it", key[0], key[1],
                           slot.epoch, self.name)
            await slot.kill("superseded", 1.0)
        # The kills were awaited: a start may have activated a row meanwhile (a second instance of
        # its epoch would be a double activation), or the node may have fenced; rows written since
        # the read are stale here.
        if not self._current(incarnation):
            return
        written = self._written_since(gen)
        if written is None:
            return
        labels = registry.labels_set()
        for i, key in enumerate(diff.activate):
            if i and i % ACTIVATE_SLICE == 0:
                # 100,000 rows take seconds to activate: let heartbeats, the watchdog and messages in between
                # (the node once fenced itself here), then re-check what the kills' await re-checks above.
                await asyncio.sleep(0)
                if not self._current(incarnation):
                    return
            if key[0] in labels and key not in self.slots and key not in self.claiming and key not in written:
                self._activate(by_key[key])


def _db_call(fn: Callable, args: tuple) -> Any:
    from .runtime import _with_connection

    return _with_connection(fn, args)


__all__ = ["Node", "INFO", "STOP_REQ"]
