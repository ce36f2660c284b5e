"""One process id on one node: its activation loop, serving one message at a time.

An ``Activation`` owns one (label, process id) on a node from the claim that
gave it the row to the moment its row is stopped, moved or taken away. It runs
instances of the user's class one after the other (a restart in place is epoch
+ 1 and a new instance), over one mailbox that outlives a restart, so messages
queued behind a crash reach the next instance.

It talks to its node only through ``ActivationHost``: lease checks, registry
writes, replies, lifecycle reports. Three promises live here:

* every message is handled only while the node's lease is valid (DESIGN I3),
  and async user code does not even resume after it ended: the activation's
  coroutine runs under a guard that throws ``LeaseLost`` into it instead;
* a failed ``init()`` of a takeover, restart or move follows the restart policy
  like a crash; only a caller's fresh start gets the error instead (I9);
* user code it cannot stop (a plain ``def`` callback in a thread, a
  ``terminate()`` that ignores cancellation) is counted, so the node never
  starts the same id again in this OS process while it runs (I10).
"""
from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import enum
import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import store, wire
from ..conf import HubSettings
from ..dbthreads import with_connection
from ..exceptions import Fenced, InvalidMessage
from ..values import FAILED, STOPPED, NodeInfo, ProcessRef, Row
from . import decisions

if TYPE_CHECKING:
    from ..process import HordeProcess
    from ..runtime import Runtime
    from .clock import Clock

logger = logging.getLogger(__name__)

# The context node-internal done-callbacks run in. Without one, each add_done_callback copies the current
# context: an object per callback that the collector walks, for every idle process. They read no context vars.
_NO_CONTEXT = contextvars.Context()


class Origin(enum.Enum):
    """Why an activation began; it decides what a failed ``init()`` means."""

    START = "start"  # a caller's start created the row or restarted a stopped one: the caller gets the error
    TAKEOVER = "takeover"  # claimed from a dead or absent owner
    ASSIGNED = "assigned"  # the row already named this node (a move, a reconcile, a rejoin)


class LeaseLost(asyncio.CancelledError):
    """Thrown into an activation's coroutine when it would resume after its node's lease ended."""


# ---------------------------------------------------------------- mailbox items


@dataclass(slots=True)
class Call:
    message: Any
    reply_to: str | None
    corr: str | None
    deadline: float | None  # time.monotonic() after which the caller has given up


@dataclass(slots=True)
class Cast:
    message: Any


@dataclass(slots=True)
class Info:
    message: Any
    epoch: int  # a timer of an earlier activation is dropped


@dataclass(slots=True)
class Request:
    """A stop or a move, answered on ``reply_to``/``corr`` or through ``future`` (a node-internal request)."""

    reply_to: str | None = None
    corr: str | None = None
    future: asyncio.Future | None = None


@dataclass(slots=True)
class StopRequest(Request):
    pass


@dataclass(slots=True)
class MoveRequest(Request):
    target: NodeInfo | None = None  # None: to nobody (the last node leaves its rows for the next boot)


@dataclass(slots=True)
class PassivateRequest(Request):
    """Deactivate an idle activation: its row stays, status idle, with the state begin_handoff() returned."""


Item = Call | Cast | Info | StopRequest | MoveRequest | PassivateRequest


class EndKind(enum.Enum):
    EXIT = "exit"  # the process called exit()
    CRASH = "crash"  # a callback raised
    STOP = "stop"  # a stop request
    MOVE = "move"  # a move request (drain, admin move, rebalance)
    IDLE = "idle"  # passivated after idle_timeout
    FENCED = "fenced"  # the node's lease ended: the node stops everything itself


@dataclass
class Ended:
    """How one instance ended."""

    kind: EndKind
    reason: str
    error: str = ""
    request: Request | None = None
    # The crash reply to a caller, sent once the restart decision is in the database,
    # so a caller that reads the registry after the error sees its effect.
    reply: tuple[str | None, str | None, dict] | None = None


# ---------------------------------------------------------------- the node, as an activation sees it


class ActivationHost(Protocol):
    """What an activation needs of its node, and nothing more."""

    name: str
    hs: HubSettings
    clock: Clock
    rt: Runtime

    @property
    def handler_pool(self) -> Executor: ...

    def lease_valid(self) -> bool: ...
    def fence_soon(self, reason: str) -> None: ...
    async def write(self, fn: Callable[..., Any], *args: Any, keys: Any = None) -> Any: ...
    async def reply(self, reply_to: str | None, corr: str | None, data: dict) -> None: ...
    async def wait_quiet(self, activation: Activation) -> None: ...
    def retire(self, activation: Activation, reason: str, crashed: bool = False) -> None: ...
    def lifecycle(self, event: str, activation: Activation | None = None, **extra: Any) -> None: ...
    async def moved(self, activation: Activation, target: NodeInfo, new_epoch: int) -> None: ...
    async def write_idle(self, activation: Activation, state: Any) -> bool: ...
    def metrics_call(self, label: str, seconds: float, kind: str = "call") -> None: ...


# ---------------------------------------------------------------- the activation


class Activation:
    # Slots, not a __dict__: a node holds one of these per process (about 1.5 KiB less each at 100,000).
    __slots__ = ("host", "node_id", "channel", "cls", "row_id", "label", "process_id", "key", "arg", "epoch",
                 "restart", "handoff", "tags", "metadata", "groups", "guided", "origin", "since", "mailbox", "ready",
                 "instance", "restart_times", "task", "current", "busy", "threads", "last_active", "timers",
                 "_kill_reason", "_terminate_until", "_quiet", "__weakref__")

    def __init__(self, host: ActivationHost, node_id: str, channel: str, cls: type[HordeProcess], row: Row,
                 origin: Origin, since: int) -> None:
        self.host = host
        self.node_id = node_id  # the incarnation that claimed the row
        self.channel = channel
        self.cls = cls
        self.row_id = row.id
        self.label = row.label
        self.process_id = row.process_id
        self.key = row.key
        self.arg = row.arg
        self.epoch = row.epoch
        self.restart = row.restart
        self.handoff = row.handoff
        self.tags = row.tags
        self.metadata: dict[str, Any] = row.metadata or {}
        self.groups = row.groups
        self.guided = row.guided
        self.origin = origin
        self.since = since  # the node's sequence value when it began (reconcile judges only older ones)
        self.mailbox = Mailbox()
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_consume, context=_NO_CONTEXT)
        self.instance: HordeProcess | None = None
        self.restart_times: list[float] | tuple = ()  # no list per idle process until its first restart
        self.task: asyncio.Task | None = None
        self.current = True  # False once the node retired it: timers and stray messages are dropped
        self.busy = False  # stopping or moving: reconcile and new requests leave it alone
        self.threads = 0  # plain ``def`` callbacks of this activation still running in worker threads
        self.last_active = time.monotonic()  # when it last handled a message (idle passivation)
        self.timers = 0  # send_after() timers not fired yet: an activation waiting for one is not idle
        self._kill_reason = "shutdown"
        self._terminate_until: float | None = None  # None: terminate may run its full shutdown_timeout
        self._quiet: asyncio.Future | None = None

    # ------------------------------------------------------------ seen from the node

    def ref(self, created: bool = False) -> ProcessRef:
        return ProcessRef(self.label, self.process_id, self.host.name, self.node_id, self.epoch, created, self.channel,
                          self.tags, self.metadata)

    def start(self) -> None:
        coro = _Guarded(self._run(), self)
        self.task = asyncio.get_running_loop().create_task(coro, name=f"processhub:{self.label}:{self.process_id}")
        self.task.add_done_callback(self._check_quiet, context=_NO_CONTEXT)

    def post(self, item: Item) -> None:
        self.mailbox.put(item)

    def quiet(self) -> bool:
        """No code of this activation runs any more: its task has ended and no callback runs in a thread."""
        return (self.task is None or self.task.done()) and self.threads == 0

    def wait_quiet(self) -> asyncio.Future:
        if self._quiet is None:
            self._quiet = asyncio.get_running_loop().create_future()
        if self.quiet() and not self._quiet.done():
            self._quiet.set_result(None)
        return self._quiet

    async def kill(self, reason: str, terminate_budget: float | None) -> bool:
        """End the activation now (terminate(reason) runs, bounded); True when no code of it runs any more.

        ``terminate_budget``: None lets ``terminate()`` run its full shutdown timeout,
        0 skips it (the row already belongs to another activation, or the lease
        ended long ago), a number bounds it in seconds.
        """
        self._kill_reason = reason
        if terminate_budget is not None:
            self._terminate_until = self.host.clock.now() + terminate_budget
        wait = self._shutdown_timeout() if terminate_budget is None else terminate_budget
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), wait + 0.5)
            except (TimeoutError, asyncio.CancelledError):
                pass
        if not self.ready.done():
            # Killed before init finished: starters waiting on it get "not here" and retry.
            self.ready.cancel()
        self._fail_waiters(wire.E_NOT_HERE, f"{self.label} {self.process_id!r} moved or stopped ({reason})")
        return self.quiet()

    # ------------------------------------------------------------ the loop

    def _may_run(self) -> bool:
        if self.host.lease_valid():
            return True
        until = self._terminate_until
        return until is not None and self.host.clock.now() < until

    async def _run(self) -> None:
        """Run instances until the activation ends; an unexpected exit never leaves a dead activation behind."""
        try:
            await self.host.wait_quiet(self)
            await self._run_instances()
        except LeaseLost:
            self._abandon_quietly("lease lost")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # kill(): the killer cleans up
            logger.error("processhub: %s %r: user code raised CancelledError", self.label, self.process_id)
            self._abandon("cancelled by user code")
        except Exception:
            logger.exception("processhub: %s %r: activation loop failed", self.label, self.process_id)
            self._abandon("activation loop failed")
        finally:
            self.instance = None  # the instance refers to its activation: no cycle left for the collector

    async def _run_instances(self) -> None:
        host = self.host
        while True:
            if not host.lease_valid():
                # The node froze between the claim and this first step (or a restart): the row may
                # already run elsewhere, so init must not run (I1, I3). The fence retires this activation.
                host.fence_soon("lease ran out before an activation could start")
                if not self.ready.done():
                    self.ready.cancel()
                return
            inst = None
            try:
                inst = self.instance = self._new_instance()  # runs the user's __init__
                await self._invoke(inst.init, self.arg)
                if self.handoff is not None:
                    await self._invoke(inst.end_handoff, self.handoff)
                    self.handoff = None
                    await self._write(store.clear_handoff, self.row_id, self.epoch)
            except LeaseLost:
                raise  # no terminate(): the lease ended, any further user code would be zombie work
            except asyncio.CancelledError:
                if inst is not None:
                    await self._terminate(inst, self._kill_reason)
                raise
            except Exception as exc:
                ended = self._crashed(exc, "init")
                if self.origin is Origin.START:
                    await self._fail_start(exc, ended.error)
                    return
            else:
                if not self.ready.done():
                    self.ready.set_result(None)
                host.lifecycle("started", self)
                try:
                    ended = await self._serve(inst)
                except LeaseLost:
                    raise
                except asyncio.CancelledError:
                    await self._terminate(inst, self._kill_reason)
                    raise
                if ended.kind is EndKind.FENCED:
                    return  # the node retires every activation itself
                if ended.kind is EndKind.MOVE:
                    await self._move(inst, ended.request)
                    return
                if ended.kind is EndKind.IDLE:
                    await self._passivate(inst, ended.request)
                    return
                await self._terminate(inst, ended.reason)
                if ended.kind is EndKind.STOP:
                    await self._stop(ended.request)
                    return
            if not await self._after_exit(ended):
                return

    async def _fail_start(self, exc: Exception, error: str) -> None:
        """A caller's fresh start whose init raised: the row fails, the caller gets the error."""
        self.busy = True
        await self._write(store.finish, self.row_id, self.node_id, self.epoch, FAILED, error)
        if not self.ready.done():
            self.ready.set_exception(_InitCrash(exc, error))
        self._fail_waiters(wire.E_NOT_RUNNING, f"init failed: {exc!r}")
        self.host.retire(self, "init failed", crashed=True)

    async def _after_exit(self, ended: Ended) -> bool:
        """Apply the restart policy to an instance that exited or crashed; True to run the next instance."""
        host, hs = self.host, self.host.hs
        crashed = ended.kind is EndKind.CRASH
        max_restarts = self.cls.max_restarts if self.cls.max_restarts is not None else hs.MAX_RESTARTS
        max_seconds = self.cls.max_seconds if self.cls.max_seconds is not None else hs.MAX_SECONDS
        now = time.monotonic()
        action = decisions.after_exit(self.restart, crashed, self.restart_times, now, max_restarts, max_seconds)
        if action is decisions.ExitAction.RESTART:
            recent = [t for t in self.restart_times if now - t < max_seconds]
            self.restart_times = [*recent, now]
            new_epoch = await self._write(store.bump_epoch, self.row_id, self.node_id, self.epoch, ended.error, True)
            await self._send_crash_reply(ended)
            if new_epoch is None:
                host.retire(self, "superseded")
                return False
            self.epoch = new_epoch
            host.lifecycle("restarted", self, reason=ended.reason)
            delay = decisions.restart_delay(len(recent))
            if delay:
                await asyncio.sleep(delay)
            return True
        # Its end is final: from here a new message is answered "not here" (its caller looks again and finds the
        # row stopped), not queued behind the end; what was queued already learns the end (_fail_waiters).
        self.busy = True
        status = FAILED if action is decisions.ExitAction.FAIL else STOPPED
        error = ended.error
        if action is decisions.ExitAction.FAIL:
            error = f"more than {max_restarts} restarts in {max_seconds}s; last error:\n{ended.error}"
        await self._write(store.finish, self.row_id, self.node_id, self.epoch, status, error)
        await self._send_crash_reply(ended)
        if not self.ready.done():
            self.ready.set_exception(_InitCrash(RuntimeError(ended.reason), error))
        self._fail_waiters(wire.E_NOT_RUNNING, f"{self.label} {self.process_id!r} is {status}")
        host.retire(self, ended.reason, crashed=crashed)
        return False

    async def _serve(self, inst: HordeProcess) -> Ended:
        host = self.host
        if _overrides(inst, "handle_continue"):
            try:
                await self._invoke(inst.handle_continue)
            except Exception as exc:
                return self._crashed(exc, "handle_continue")
        mailbox = self.mailbox
        while True:
            if inst._exit_reason is not None:
                return Ended(EndKind.EXIT, inst._exit_reason)
            while mailbox.empty():
                await mailbox.wait()  # a bare future: no coroutine frame per idle process
            item = mailbox.get()
            if not host.lease_valid():
                if isinstance(item, Call):
                    await self._reply_error(item, wire.E_FENCED, "node lost its lease")
                host.fence_soon("lease ran out while serving")
                return Ended(EndKind.FENCED, "lease lost")
            if isinstance(item, Call):
                if item.deadline is not None and time.monotonic() > item.deadline:
                    continue  # the caller gave up already; handling it now would surprise everyone
                t0 = time.perf_counter()
                try:
                    value = await self._invoke(inst.handle_call, item.message)
                except Exception as exc:
                    ended = self._crashed(exc, "handle_call")
                    ended.reply = (item.reply_to, item.corr, {
                        "ok": False, "err": wire.E_CRASHED, "msg": repr(exc), "exc_type": type(exc).__qualname__,
                        "tb": ended.error})
                    return ended
                handled = time.perf_counter() - t0
                try:
                    wire.check_data(value, "reply", host.hs.MAX_MESSAGE_BYTES)
                    data = {"ok": True, "v": value}
                except InvalidMessage as exc:
                    data = {"ok": False, "err": wire.E_INVALID, "msg": str(exc)}
                if inst._exit_reason is not None:
                    ended = Ended(EndKind.EXIT, inst._exit_reason)
                    ended.reply = (item.reply_to, item.corr, data)
                    return ended
                await host.reply(item.reply_to, item.corr, data)
                host.metrics_call(self.label, handled)
            elif isinstance(item, Cast):
                t0 = time.perf_counter()
                try:
                    await self._invoke(inst.handle_cast, item.message)
                except Exception as exc:
                    return self._crashed(exc, "handle_cast")
                host.metrics_call(self.label, time.perf_counter() - t0, wire.CAST)
            elif isinstance(item, Info):
                if item.epoch != self.epoch:
                    continue  # a timer of an earlier instance
                try:
                    await self._invoke(inst.handle_info, item.message)
                except Exception as exc:
                    return self._crashed(exc, "handle_info")
            elif isinstance(item, StopRequest):
                return Ended(EndKind.STOP, "shutdown", request=item)
            elif isinstance(item, MoveRequest):
                return Ended(EndKind.MOVE, "handoff", request=item)
            elif isinstance(item, PassivateRequest):
                if self.timers or not mailbox.empty() or inst._exit_reason is not None:
                    await self._answer(item, False)  # it got work since it was found idle
                    self.busy = False
                    continue
                return Ended(EndKind.IDLE, "idle", request=item)
            self.last_active = time.monotonic()

    # ------------------------------------------------------------ endings

    async def _stop(self, request: Request | None) -> None:
        self.busy = True  # as at a final exit: a call sent after the stop's answer starts it again elsewhere
        done = await self._write(store.finish, self.row_id, self.node_id, self.epoch, STOPPED, "")
        await self._answer(request, bool(done))
        self._fail_waiters(wire.E_NOT_RUNNING, "stopped")
        self.host.retire(self, "stopped")

    async def _move(self, inst: HordeProcess, request: Request | None) -> None:
        """Hand this process to another node (or to nobody, on the last node): epoch + 1, fenced.

        ``begin_handoff()`` runs first, then ``terminate("handoff")``: whatever terminate
        cleans up is already in the handed-off state.
        """
        assert isinstance(request, MoveRequest)
        host = self.host
        target = request.target
        state = await self._handoff_state(inst)
        await self._terminate(inst, "handoff")
        if target is None and self.restart == "temporary":
            moved = await self._write(store.finish, self.row_id, self.node_id, self.epoch, STOPPED, "node shut down")
        else:
            moved = await self._write(store.move, self.row_id, self.node_id, self.epoch, target and target.id, state)
        host.retire(self, "moved")
        if moved and target is not None:
            await host.moved(self, target, moved)
        await self._answer(request, bool(moved))
        self._fail_waiters(wire.E_NOT_HERE, "moved")

    async def _passivate(self, inst: HordeProcess, request: Request | None) -> None:
        """Deactivate: ``begin_handoff()`` state into the row, ``terminate("idle")``, status idle (still desired:
        the next call, cast or start activates it again, wherever placement says, with that state)."""
        state = await self._handoff_state(inst)
        await self._terminate(inst, "idle")
        done = await self.host.write_idle(self, state)
        self.host.retire(self, "idle")
        await self._answer(request, bool(done))
        self._fail_waiters(wire.E_NOT_HERE, "passivated")

    async def _handoff_state(self, inst: HordeProcess) -> Any:
        if not _overrides(inst, "begin_handoff"):
            return None
        try:
            state = await self._invoke(inst.begin_handoff)
            wire.check_data(state, "handoff state", self.host.hs.MAX_MESSAGE_BYTES)
            return state
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("processhub: begin_handoff of %s %r failed; its state is not kept", self.label,
                             self.process_id)
            return None

    async def _terminate(self, inst: HordeProcess, reason: str) -> None:
        budget = self._shutdown_timeout()
        if self._terminate_until is not None:
            budget = min(budget, self._terminate_until - self.host.clock.now())
        if budget <= 0:
            return  # the lease ended long ago, or the row belongs to another activation: terminate would be zombie work
        try:
            await asyncio.wait_for(self._invoke(inst.terminate, reason), budget)
        except TimeoutError:
            logger.warning("processhub: terminate of %s %r took longer than %.2fs", self.label, self.process_id,
                           budget)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("processhub: terminate of %s %r raised", self.label, self.process_id)

    def _shutdown_timeout(self) -> float:
        t = self.cls.shutdown_timeout
        return t if t is not None else self.host.hs.SHUTDOWN_TIMEOUT

    def _crashed(self, exc: BaseException, where: str) -> Ended:
        error = _tb(exc)
        logger.warning("processhub: %s %r crashed in %s on node %s (epoch %s): %r", self.label, self.process_id,
                       where, self.host.name, self.epoch, exc)
        self.host.lifecycle("crashed", self, reason=repr(exc))
        return Ended(EndKind.CRASH, f"crash: {exc!r}", error)

    def _abandon(self, reason: str) -> None:
        # Unblock starters and callers, and retire the activation so that the next reconcile
        # (rows naming this node with no activation) starts the process again.
        if not self.ready.done():
            self.ready.set_exception(_InitCrash(RuntimeError(reason), reason))
        self._fail_waiters(wire.E_NOT_HERE, reason)
        self.host.retire(self, reason, crashed=True)

    def _abandon_quietly(self, reason: str) -> None:
        # The lease ended under a running callback: the node's fence retires everything; just unblock.
        if not self.ready.done():
            self.ready.cancel()
        self._fail_waiters(wire.E_FENCED, "node lost its lease")
        self.host.fence_soon("lease ran out under a running callback")

    # ------------------------------------------------------------ plumbing

    def _new_instance(self) -> HordeProcess:
        inst = self.cls.__new__(self.cls)
        inst.process_id = self.process_id
        inst.node = self.host.name
        inst.node_id = self.node_id
        inst.epoch = self.epoch
        inst._activation = self
        inst._exit_reason = None
        inst.__init__()  # type: ignore[misc]  # the user's constructor, on the instance made above
        return inst

    async def _invoke(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await an async callback, or run a plain ``def`` one in a worker thread (counted while it runs)."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if not self._may_run():
            raise LeaseLost()  # never hand user code to a thread once the lease has ended
        loop = asyncio.get_running_loop()
        self.threads += 1
        try:
            fut = loop.run_in_executor(self.host.handler_pool, self._in_thread, loop, fn, args)
        except BaseException:
            self.threads -= 1
            raise
        return await fut

    def _in_thread(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple) -> Any:
        try:
            # Checked again where it runs: a callback can wait in the pool's queue (every worker busy with
            # blocking handlers) past the end of the lease, and then it must not start.
            if not self._may_run():
                raise LeaseLost()
            return with_connection(fn, args)
        finally:
            try:
                loop.call_soon_threadsafe(self._thread_done)
            except RuntimeError:
                pass  # the loop is closed: the node is gone, nobody counts any more

    def _thread_done(self) -> None:
        self.threads -= 1
        self._check_quiet()

    def _check_quiet(self, _task: Any = None) -> None:
        if self._quiet is not None and not self._quiet.done() and self.quiet():
            self._quiet.set_result(None)

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.host.write(fn, *args, keys=(self.key,))

    async def _send_crash_reply(self, ended: Ended) -> None:
        if ended.reply is not None:
            await self.host.reply(*ended.reply)

    async def _reply_error(self, item: Call, code: str, msg: str) -> None:
        await self.host.reply(item.reply_to, item.corr, {"ok": False, "err": code, "msg": msg})

    async def _answer(self, request: Request | None, ok: bool) -> None:
        if request is None:
            return
        if request.future is not None:
            if not request.future.done():
                request.future.set_result(ok)
        elif request.reply_to:
            data = {"ok": True} if ok else {"ok": False, "err": wire.E_NOT_HERE, "msg": "not done"}
            await self.host.reply(request.reply_to, request.corr, data)

    def _fail_waiters(self, code: str, msg: str) -> None:
        """Answer every request still queued here, so callers retry elsewhere or learn the end."""
        while not self.mailbox.empty():
            item = self.mailbox.get()
            if isinstance(item, Call):
                asyncio.ensure_future(self._reply_error(item, code, msg))
            elif isinstance(item, Request):
                asyncio.ensure_future(self._answer(item, False))

    # ------------------------------------------------------------ for HordeProcess

    def timer(self, seconds: float, message: Any, epoch: int) -> Timer:
        """Deliver ``message`` to handle_info() of the instance of ``epoch`` after ``seconds`` (loop thread)."""
        return Timer(self, seconds, message, epoch)

    async def annotate(self, epoch: int, tags: tuple[str, ...] | None = None, metadata: dict | None = None,
                       groups: tuple[str, ...] | None = None) -> None:
        """Store new tags, metadata or groups on the row (fenced on ``epoch``), then here: queries see them at once."""
        if epoch != self.epoch or not self.host.lease_valid():
            raise Fenced(f"{self.label} {self.process_id!r} epoch {epoch} no longer runs here")
        done = await self._write(store.annotate, self.row_id, self.node_id, epoch, tags, metadata, groups)
        if not done:
            raise Fenced(f"{self.label} {self.process_id!r} epoch {epoch} is no longer owned by this activation")
        if tags is not None:
            self.tags = tags
        if metadata is not None:
            self.metadata = metadata
        if groups is not None:
            self.groups = groups

    def fence_token(self, epoch: int) -> store.FenceToken:
        return store.FenceToken(self.label, self.process_id, self.node_id, epoch, self.host.lease_valid,
                                self.host.hs.NODE_TTL)


class Timer:
    """A pending ``send_after``: ``cancel()`` takes the message back. While one is pending the activation is
    not idle (it expects to do something then)."""

    __slots__ = ("_activation", "_handle", "_message", "_epoch")

    def __init__(self, activation: Activation, seconds: float, message: Any, epoch: int) -> None:
        self._activation, self._message, self._epoch = activation, message, epoch
        activation.timers += 1
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._handle = None
        act = self._activation
        act.timers -= 1
        if act.current and act.epoch == self._epoch:
            act.post(Info(self._message, self._epoch))

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._activation.timers -= 1

    def cancelled(self) -> bool:
        return self._handle is None


class Mailbox:
    """A FIFO for one activation, cheap when idle (memory per idle process).

    asyncio.Queue costs about 3 KiB even when empty (four deques and an Event);
    this holds nothing but two slots while idle: the deque exists only while
    items wait, the future only while the activation waits.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque | None = None
        self._waiter: asyncio.Future | None = None

    def put(self, item: Item) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get(self) -> Item:
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


class _Guarded(collections.abc.Coroutine):
    """Runs a coroutine one step at a time, each only while ``allowed()`` says so.

    A node that wakes from a freeze (SIGSTOP, a long GC, a VM pause) past its lease
    must not let an activation's async user code take one more step: the loop may
    run that activation's timer before the node's own watchdog. So every resumption
    of the activation's coroutine is checked first, and resumed with ``LeaseLost``
    thrown at its await instead when the lease has ended.

    Once the coroutine has ended it lets go of the activation: its task outlives it
    (``Activation.task``), and the cycle activation -> task -> guard -> activation
    would keep every ended activation for the cyclic collector, which a node must
    not have to run after 100,000 passivations.
    """

    __slots__ = ("_coro", "_owner")

    def __init__(self, coro: collections.abc.Coroutine, owner: Activation) -> None:
        self._coro = coro
        self._owner: Activation | None = owner  # not a bound method of it: one object less per idle process

    def send(self, value: Any) -> Any:
        owner = self._owner
        try:
            if owner is None or owner._may_run():
                return self._coro.send(value)
            return self._coro.throw(LeaseLost())
        except BaseException:
            self._owner = None  # returned (StopIteration) or raised: the coroutine has ended
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)  # the three-argument form, for old callers
        except BaseException:
            self._owner = None
            raise

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:
        return self

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self.send(None)


class _InitCrash(Exception):
    """An activation that could not start: carries the remote error type and traceback for the starter."""

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


def _overrides(inst: Any, name: str) -> bool:
    """Whether the user's class defines callback ``name`` (the base class's do nothing)."""
    return not getattr(getattr(type(inst), name), "__processhub_default__", False)


__all__ = ["Activation", "ActivationHost", "Origin", "LeaseLost", "Mailbox"]
