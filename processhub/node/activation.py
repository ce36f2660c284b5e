"""One process id on one node: its mailbox, and the activations that serve it one message at a time.

The mailbox outlives a restart in place, so messages queued behind a crash are
handled by the next activation. Every message is handled only after checking
that the node still holds its lease (DESIGN I3).
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

from . import decisions, store, wire
from .exceptions import InvalidMessage
from .models import ProcessStatus

if TYPE_CHECKING:
    from .node import Node
    from .process import HordeProcess

logger = logging.getLogger(__name__)

# Mailbox item kinds besides the wire's call/cast.
INFO, STOP_REQ, MOVE_REQ = "info", "stop", "move"


class _Outcome:
    def __init__(self, kind: str, reason: str = "", error: str = "", item: tuple | None = None) -> None:
        self.kind, self.reason, self.error, self.item = kind, reason, error, item
        # The crash reply to a caller, sent once the restart decision is in the database,
        # so a caller that reads the registry after the error sees its effect.
        self.reply: tuple | None = None


class Slot:
    def __init__(self, node: Node, cls: type[HordeProcess], row: store.Row) -> None:
        self.node = node
        self.cls = cls
        self.row_id = row.id
        self.label = row.label
        self.process_id = row.process_id
        self.key = (row.label, row.process_id)
        self.arg = row.arg
        self.epoch = row.epoch
        self.restart = row.restart
        self.handoff = row.handoff
        self.mailbox = _Mailbox()
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_consume)
        self.instance: HordeProcess | None = None
        self.restart_times: list[float] | tuple = ()  # no list per idle process until its first restart
        self.task: asyncio.Task | None = None
        self.busy = False  # moving/stopping: reconcile leaves it alone
        self.kill_reason = "shutdown"

    def ref(self, created: bool = False):
        from .client import ProcessRef

        node = self.node
        return ProcessRef(self.label, self.process_id, node.name, node.id, self.epoch, created, node.channel)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"processhub:{self.label}:{self.process_id}")

    def post(self, item: tuple) -> None:
        self.mailbox.put_nowait(item)

    async def kill(self, reason: str, timeout: float) -> None:
        """Cancel the activation (terminate(reason) runs, bounded by ``timeout``)."""
        self.kill_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout + 1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
        if not self.ready.done():
            # Killed before init finished: starters waiting on it get "not here" and retry.
            self.ready.cancel()
        self._fail_waiters(wire.E_NOT_HERE, f"{self.label} {self.process_id!r} moved or stopped ({reason})")

    # ------------------------------------------------------------------ run

    def _new_instance(self) -> HordeProcess:
        inst = self.cls.__new__(self.cls)
        inst.process_id = self.process_id
        inst.node = self.node.name
        inst.node_id = self.node.id
        inst.epoch = self.epoch
        inst._slot = self
        inst._exit_reason = None
        inst.__init__()
        return inst

    async def _run(self) -> None:
        """Run activations until the slot ends; an unexpected exit never leaves a dead slot registered."""
        try:
            await self._run_activations()
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # our own kill(): the killer cleans up
            logger.error("processhub: %s %r: user code raised CancelledError", self.label, self.process_id)
            self._abandon("cancelled by user code")
        except Exception:
            logger.exception("processhub: %s %r: activation loop failed", self.label, self.process_id)
            self._abandon("activation loop failed")

    def _abandon(self, reason: str) -> None:
        # Unblock starters and callers, and drop the slot so that the next reconcile
        # (rows naming this node with no activation) starts the process again.
        if not self.ready.done():
            self.ready.set_exception(_Crash(RuntimeError(reason), reason))
        self._fail_waiters(wire.E_NOT_HERE, reason)
        self.node.forget(self, reason, crashed=True)

    async def _run_activations(self) -> None:
        node = self.node
        while True:
            if not node.lease_valid():
                # The node froze between claiming this row and this first step (or a restart
                # in place): the row may already run elsewhere, so init must not run (I1, I3).
                # The fence kills this slot; starters waiting on it retry elsewhere.
                node.fence_soon("lease ran out before an activation could start")
                if not self.ready.done():
                    self.ready.cancel()
                return
            inst = None
            try:
                inst = self.instance = self._new_instance()  # runs the user's __init__
                await node.invoke(inst.init, self.arg)
                if self.handoff is not None:
                    await node.invoke(inst.end_handoff, self.handoff)
                    self.handoff = None
                    await self._write(store.clear_handoff, self.row_id, self.epoch)
            except asyncio.CancelledError:
                if inst is not None:
                    await self._terminate(inst, self.kill_reason)
                raise
            except Exception as exc:
                error = _tb(exc)
                logger.error("processhub: init of %s %r failed (epoch %s): %s", self.label, self.process_id,
                             self.epoch, exc)
                await self._write(store.finish, self.row_id, node.id, self.epoch, ProcessStatus.FAILED, error)
                if not self.ready.done():
                    self.ready.set_exception(_Crash(exc, error))
                self._fail_waiters(wire.E_NOT_RUNNING, f"init failed: {exc!r}")
                node.forget(self, "init failed", crashed=True)
                return
            if not self.ready.done():
                self.ready.set_result(None)
            node.lifecycle("started", self)
            try:
                outcome = await self._serve(inst)
            except asyncio.CancelledError:
                await self._terminate(inst, self.kill_reason)
                raise
            if outcome.kind == "fenced":
                return  # the node fences every slot itself
            await self._terminate(inst, outcome.reason)
            if outcome.kind == "stop":
                done = await self._write(store.finish, self.row_id, node.id, self.epoch, ProcessStatus.STOPPED, "")
                await node.ack(outcome.item, bool(done))
                self._fail_waiters(wire.E_NOT_RUNNING, "stopped")
                node.forget(self, "stopped")
                return
            if outcome.kind == "move":
                await self._move(outcome.item)
                return
            crashed = outcome.kind == "crash"
            hs = node.hs
            max_restarts = self.cls.max_restarts if self.cls.max_restarts is not None else hs.MAX_RESTARTS
            max_seconds = self.cls.max_seconds if self.cls.max_seconds is not None else hs.MAX_SECONDS
            now = time.monotonic()
            action = decisions.after_exit(self.restart, crashed, self.restart_times, now, max_restarts, max_seconds)
            if action == decisions.RESTART:
                self.restart_times = [t for t in self.restart_times if now - t < max_seconds] + [now]
                new_epoch = await self._write(store.bump_epoch, self.row_id, node.id, self.epoch, outcome.error, True)
                if new_epoch is None:
                    await self._send_crash_reply(outcome)
                    node.forget(self, "superseded")
                    return
                self.epoch = new_epoch
                await self._send_crash_reply(outcome)
                node.lifecycle("restarted", self, reason=outcome.reason)
                continue
            status = ProcessStatus.FAILED if action == decisions.FAIL else ProcessStatus.STOPPED
            error = outcome.error
            if action == decisions.FAIL:
                error = f"more than {max_restarts} restarts in {max_seconds}s; last error:\n{outcome.error}"
            await self._write(store.finish, self.row_id, node.id, self.epoch, status, error)
            await self._send_crash_reply(outcome)
            self._fail_waiters(wire.E_NOT_RUNNING, f"{self.label} {self.process_id!r} is {status}")
            node.forget(self, outcome.reason, crashed=crashed)
            return

    async def _serve(self, inst: HordeProcess) -> _Outcome:
        node = self.node
        if type(inst).handle_continue is not _base().handle_continue:
            try:
                await node.invoke(inst.handle_continue)
            except Exception as exc:
                return self._crash(exc)
        while True:
            if inst._exit_reason is not None:
                return _Outcome("exit", inst._exit_reason)
            mailbox = self.mailbox
            while mailbox.empty():
                await mailbox.wait()  # a bare future: no coroutine frame per idle process
            item = mailbox.get_nowait()
            kind = item[0]
            if not node.lease_valid():
                if kind == wire.CALL:
                    await node.reply_error(item[2], item[3], wire.E_FENCED, "node lost its lease")
                node.fence_soon("lease ran out while serving")
                return _Outcome("fenced", "lease lost")
            if kind == wire.CALL:
                _, message, reply_to, corr, deadline = item
                if deadline is not None and time.monotonic() > deadline:
                    continue  # the caller gave up already; handling it now would surprise everyone
                t0 = time.perf_counter()
                try:
                    value = await node.invoke(inst.handle_call, message)
                except Exception as exc:
                    outcome = self._crash(exc)
                    outcome.reply = (reply_to, corr, {"ok": False, "err": wire.E_CRASHED, "msg": repr(exc),
                                                      "exc_type": type(exc).__qualname__, "tb": outcome.error})
                    return outcome
                handled = time.perf_counter() - t0
                try:
                    data = {"ok": True, "v": value}
                    wire.check_data(value, "reply", node.hs.MAX_MESSAGE_BYTES)
                except InvalidMessage as exc:
                    data = {"ok": False, "err": wire.E_INVALID, "msg": str(exc)}
                if inst._exit_reason is not None:
                    outcome = _Outcome("exit", inst._exit_reason)
                    outcome.reply = (reply_to, corr, data)
                    return outcome
                await node.reply(reply_to, corr, data)
                node.metrics_call(self.label, handled)
            elif kind == wire.CAST:
                t0 = time.perf_counter()
                try:
                    await node.invoke(inst.handle_cast, item[1])
                except Exception as exc:
                    return self._crash(exc)
                node.metrics_call(self.label, time.perf_counter() - t0, wire.CAST)
            elif kind == INFO:
                if item[2] != self.epoch:
                    continue  # a timer of an earlier activation
                try:
                    await node.invoke(inst.handle_info, item[1])
                except Exception as exc:
                    return self._crash(exc)
            elif kind == STOP_REQ:
                return _Outcome("stop", "shutdown", item=item)
            elif kind == MOVE_REQ:
                return _Outcome("move", "handoff", item=item)

    async def _send_crash_reply(self, outcome: _Outcome) -> None:
        if outcome.reply is not None:
            await self.node.reply(*outcome.reply)

    async def _write(self, fn, *args):
        return await self.node.write(fn, *args, keys=(self.key,))

    def _crash(self, exc: BaseException) -> _Outcome:
        error = _tb(exc)
        logger.warning("processhub: %s %r crashed on node %s (epoch %s): %r", self.label, self.process_id,
                       self.node.name, self.epoch, exc)
        self.node.lifecycle("crashed", self, reason=repr(exc))
        return _Outcome("crash", f"crash: {exc!r}", error)

    async def _terminate(self, inst: HordeProcess, reason: str) -> None:
        timeout = self.cls.shutdown_timeout if self.cls.shutdown_timeout is not None else self.node.hs.SHUTDOWN_TIMEOUT
        try:
            await asyncio.wait_for(self.node.invoke(inst.terminate, reason), timeout)
        except TimeoutError:
            logger.warning("processhub: terminate of %s %r took longer than %ss", self.label, self.process_id, timeout)
        except Exception:
            logger.exception("processhub: terminate of %s %r raised", self.label, self.process_id)

    async def _move(self, item: tuple) -> None:
        """Hand this process to another node (or to nobody, on the last node): epoch+1, fenced."""
        node = self.node
        _, target, reply_to, corr = item
        state = None
        inst = self.instance
        if inst is not None and type(inst).begin_handoff is not _base().begin_handoff:
            try:
                state = await node.invoke(inst.begin_handoff)
                wire.check_data(state, "handoff state", node.hs.MAX_MESSAGE_BYTES)
            except Exception:
                logger.exception("processhub: begin_handoff of %s %r failed; moving cold", self.label,
                                 self.process_id)
                state = None
        if target is None and self.restart == "temporary":
            moved = await self._write(store.finish, self.row_id, node.id, self.epoch, ProcessStatus.STOPPED,
                                     "node shut down")
        else:
            moved = await self._write(store.move, self.row_id, node.id, self.epoch, target and target.id, state)
        node.forget(self, "moved")
        if moved and target is not None:
            await node.hint_activate(target, self.row_id)
            node.lifecycle("moved", self, to_node=target.name, new_epoch=moved)
        await node.ack(item, bool(moved))
        self._fail_waiters(wire.E_NOT_HERE, "moved")

    def _fail_waiters(self, code: str, msg: str) -> None:
        """Answer every call still queued here, so callers retry elsewhere or learn the end."""
        while not self.mailbox.empty():
            item = self.mailbox.get_nowait()
            if item[0] == wire.CALL:
                asyncio.ensure_future(self.node.reply_error(item[2], item[3], code, msg))
            elif item[0] in (STOP_REQ, MOVE_REQ):
                asyncio.ensure_future(self.node.ack(item, False))


class _Mailbox:
    """A FIFO for one slot, cheap when idle (issue 4: memory per idle process).

    asyncio.Queue costs about 3 KiB even when empty (four deques and an Event);
    this holds nothing but two slots while idle: the deque exists only while
    items wait, the future only while the activation waits.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque | None = None
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item: tuple) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> tuple:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def wait(self) -> asyncio.Future:
        """A future done when an item arrives (or already done); await it, then look again."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def get(self) -> tuple:
        while not self._items:
            await self.wait()
        return self.get_nowait()


class _Crash(Exception):
    def __init__(self, exc: BaseException, tb: str) -> None:
        super().__init__(repr(exc))
        self.exc_type = type(exc).__qualname__
        self.tb = tb


def _tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-8000:]


def _consume(fut: asyncio.Future) -> None:
    # Mark an init failure as retrieved: it is reported to starters, not lost.
    if not fut.cancelled():
        fut.exception()


def _base():
    from .process import HordeProcess

    return HordeProcess


__all__: list[Any] = ["Slot"]
