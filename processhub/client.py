"""The client side of the protocol: find, start, call, cast and stop processes by id.

Lives on the runtime loop of its OS process (one reply channel, one pending-call
table keyed by correlation id). Lookups go to a cache first and to the database
on a miss (DESIGN I5); cache entries die with their node (events, live-node set).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from django.db import DatabaseError

from . import classes, metrics, placement, signals, store, wire
from .conf import hub_settings
from .exceptions import (
    CallTimeout,
    DatabaseUnavailable,
    HubAtCapacity,
    IncompatibleWireVersion,
    InvalidArgument,
    InvalidMessage,
    NoLiveNodes,
    ProcessCrashed,
    ProcessHubError,
    ProcessNotRunning,
    ProcessUnavailable,
    StartManyFailed,
    SyncCallFromAsyncContext,
    UnknownProcessClass,
)
from .logs import Throttled
from .transport import FRAMED_SUFFIX, LoopPublisher, Transport
from .transport.envelope import WIRE_VERSION
from .values import IDLE, RUNNING, Lookup, NodeInfo, ProcessRef


class ClientRuntime(Protocol):
    """What the client needs of its runtime (runtime.py builds the client, so it is not imported here)."""

    loop: asyncio.AbstractEventLoop
    transport: Transport

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any: ...
    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T: ...
    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T: ...


# A HordeProcess subclass (process.py imports this module, so the client names it loosely).
ProcessClass = type[Any]
T = TypeVar("T")

logger = logging.getLogger(__name__)


def refuse_running_loop() -> None:
    """Raise SyncCallFromAsyncContext in a thread that runs an event loop (a sync call would block it)."""
    if asyncio._get_running_loop() is not None:
        raise SyncCallFromAsyncContext(
            "a sync processhub call was made from a running event loop; use the async twin (acall, astart, ...)"
        )


_ID_BATCH = 256
_ids: list[str] = []  # unguessable ids made ahead, taken with list.pop() (atomic: threads need no lock)
os.register_at_fork(after_in_child=_ids.clear)  # a forked child must not hand out its parent's ids


def new_correlation_id() -> str:
    """An unguessable id for one request: a forged reply cannot be matched to a waiting call by guessing.

    12 bytes of os.urandom each, drawn 256 ids at a time: one system call per 256 requests, not one each.
    """
    while True:
        try:
            return _ids.pop()
        except IndexError:
            block = os.urandom(12 * _ID_BATCH).hex()
            _ids.extend([block[i:i + 24] for i in range(0, len(block), 24)])


class _Blocking:
    """A pending-call entry for a thread blocked in ``call_blocking``; the loop thread's reply handler wakes it."""

    __slots__ = ("_lock", "env")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.env: dict | None = None

    def done(self) -> bool:
        return self.env is not None

    def set_result(self, env: dict) -> None:
        self.env = env
        self._lock.release()

    def wait(self, timeout: float) -> dict | None:
        return self.env if self._lock.acquire(timeout=max(0.0, timeout)) else None


class _OtherLoop:
    """A pending-call entry for a caller on another event loop: the reply is handed over thread-safely."""

    __slots__ = ("loop", "fut")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
        self.loop, self.fut = loop, fut

    def done(self) -> bool:
        return self.fut.done()

    def set_result(self, env: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(_resolve, self.fut, env)
        except RuntimeError:
            pass  # that loop is closed: nobody waits any more


def _resolve(fut: asyncio.Future, env: dict) -> None:
    if not fut.done():
        fut.set_result(env)


_MISS = object()
LOOKUP_BATCH = 500  # keys per registry lookup statement
MAX_MANY = 1000  # ids per START_MANY / STOP_MANY message (nodes accept up to 2,000)
SEEN_IDLE_MAX = 10_000  # keys remembered as seen idle (a hint for their next start)


def _name_of(cls: ProcessClass, arg: Any, index: int) -> str:
    """How start_many names a refused argument: its process id if it has one, else its position ("#3")."""
    try:
        pid = cls.process_id(arg)
    except Exception:  # noqa: BLE001 - the argument was refused already; this only names it
        pid = None
    return pid if isinstance(pid, str) and pid else f"#{index}"


@dataclass(frozen=True)
class StartManyResult:
    """What ``start_many`` did: ``refs`` (process id -> ProcessRef) and ``errors`` (id -> ProcessHubError).

    An argument whose id could not even be computed is reported under ``"#<its index in args>"``.
    """

    refs: dict[str, ProcessRef]
    errors: dict[str, ProcessHubError]


@dataclass(frozen=True, slots=True)
class StartWith:
    """What a call or cast does when the process does not run: start it (with these tags and metadata), or not."""

    start: bool = True
    tags: tuple[str, ...] | None = None
    metadata: dict[str, Any] | None = None


GET_OR_START = StartWith()
NOT_STARTED = StartWith(start=False)


def start_with(start: bool = True, tags: Any = (), metadata: Any = None) -> StartWith:
    """Checked start options (``InvalidArgument`` for bad tags or metadata); the shared default when plain."""
    if start is True and not tags and metadata is None:
        return GET_OR_START
    return StartWith(bool(start), wire.check_tags(tags) if tags else None,
                     None if metadata is None else wire.check_metadata(metadata))


def _retrieve(task: asyncio.Future) -> None:
    # Whoever awaited the shared query got its error; never log it again as "never retrieved".
    if not task.cancelled():
        task.exception()


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Undelivered(Exception):
    """Nobody subscribes to the channel: its node is gone. Safe to retry (nothing was handled)."""


_ERRORS: dict[str, type[ProcessHubError]] = {
    wire.E_INVALID: InvalidMessage,
    wire.E_UNKNOWN_CLASS: UnknownProcessClass,
    wire.E_NOT_RUNNING: ProcessNotRunning,
    wire.E_UNAVAILABLE: ProcessUnavailable,
    wire.E_AT_CAPACITY: HubAtCapacity,
}


def error_from(env: dict) -> ProcessHubError:
    code = env.get("err")
    msg = str(env.get("msg", code))
    if code == wire.E_CRASHED:
        return ProcessCrashed(msg, str(env.get("exc_type", "")), str(env.get("tb", "")))
    return _ERRORS.get(str(code), ProcessUnavailable)(msg)


class Client:
    def __init__(self, rt: ClientRuntime) -> None:
        hs = hub_settings()
        self.rt = rt
        self.hs = hs
        self.reply_channel = f"{hs.PREFIX}.reply.{uuid.uuid4().hex}{FRAMED_SUFFIX}"
        self.events_channel = wire.events_channel(hs.PREFIX)
        self.pending: dict[str, asyncio.Future] = {}
        self.cache: dict[tuple[str, str], ProcessRef] = {}
        # Keys whose last lookup found them idle (passivated): their start asks the node to wake the row in one
        # statement ("wi"). A hint only: a row no longer idle takes the usual path. Bounded, cleared when full.
        self._seen_idle: dict[tuple[str, str], None] = {}
        self.live: dict[str, NodeInfo] = {}
        self.live_at = -1e9
        self._log = Throttled(logger)
        self._blocking = rt.transport.blocking()  # None: sync callers hop onto the loop
        self._refreshing = False
        self._nodes_query: asyncio.Future | None = None
        self._lookups: dict[tuple[str, str], list[asyncio.Future]] = {}
        self._lookup_pump: asyncio.Task | None = None
        # Per-call metrics hook (processhub.metrics); None skips the timing altogether.
        self.metrics_observe = metrics.client_observer()

    # ---------------------------------------------------------- plumbing

    async def open(self) -> None:
        await self.rt.transport.subscribe(self.reply_channel, self._on_reply)
        await self.rt.transport.subscribe(self.events_channel, self._on_event)

    def _on_reply(self, data: bytes) -> None:
        try:
            env = wire.loads(data, self.hs.MAX_MESSAGE_BYTES)
        except InvalidMessage as exc:
            self._log.warning("reply", "processhub: dropped a malformed reply: %s", exc)
            return
        corr = env.get("id")
        fut = self.pending.pop(corr, None) if isinstance(corr, str) else None
        if fut is not None and not fut.done():
            fut.set_result(env)

    def _on_event(self, data: bytes) -> None:
        try:
            env = wire.loads(data, self.hs.MAX_MESSAGE_BYTES)
        except InvalidMessage:
            return
        if env.get("e") == wire.EVENT_BATCH:
            items = env.get("items")
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and item.get("e") in ("registered", "unregistered"):
                    self._apply_event(item)
        else:
            self._apply_event(env)

    def _apply_event(self, env: dict) -> None:
        kind = env.get("e")
        if kind in ("node_up", "node_down", "nodes_changed"):
            self.live_at = -1e9
            if kind == "nodes_changed":
                # Some node's lease ran out: stop trusting cached owners until the next refresh.
                self.live = {}
            gone = env.get("node")
            if kind == "node_down" and gone:
                self.live.pop(gone, None)
                for key, ref in list(self.cache.items()):
                    if ref.node_id == gone:
                        self.cache.pop(key, None)
        elif kind == "unregistered":
            cached = self.cache.get((str(env.get("l")), str(env.get("p"))))
            epoch = env.get("epoch", 1 << 62)
            if cached is not None and isinstance(epoch, int) and cached.epoch <= epoch:
                self.cache.pop((cached.label, cached.process_id), None)
            signals.hub_event(env)
        elif kind == "registered":
            key = (str(env.get("l")), str(env.get("p")))
            cached = self.cache.get(key)
            epoch, node_id, name, channel = env.get("epoch"), env.get("ni"), env.get("n"), env.get("c")
            if cached is not None and isinstance(epoch, int) and epoch > cached.epoch and isinstance(node_id, str) \
                    and isinstance(name, str) and isinstance(channel, str):
                # The new owner after a takeover or move: no lookup needed for the next call.
                self.cache[key] = ProcessRef(key[0], key[1], name, node_id, epoch, False, channel, cached.tags,
                                             cached.metadata)
            signals.hub_event(env)

    async def db(self, fn, *args):
        # Bounded (I7): a blackholed database link must not hold a caller past its timeout.
        try:
            async with asyncio.timeout(self.hs.CALL_TIMEOUT):
                return await self.rt.db(fn, *args)
        except DatabaseError as exc:
            raise DatabaseUnavailable(f"the registry database failed: {exc}") from exc
        except TimeoutError:
            raise DatabaseUnavailable(f"the registry database did not answer within {self.hs.CALL_TIMEOUT}s") from None

    def _keep_live_fresh(self) -> None:
        """Refresh the live-node set in the background once it is a heartbeat old (any thread).

        ``cached()`` trusts it for two heartbeats, so a steady stream of calls never
        waits for this query inline (it used to, once per second: the p99).
        """
        if self._refreshing or time.monotonic() - self.live_at <= self.hs.HEARTBEAT_INTERVAL:
            return
        self._refreshing = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.rt.loop:
            running.create_task(self._refresh_live())
        else:
            asyncio.run_coroutine_threadsafe(self._refresh_live(), self.rt.loop)

    async def _refresh_live(self) -> None:
        try:
            await self.nodes(force=True)
        except ProcessHubError as exc:
            logger.debug("processhub: refreshing the live nodes failed: %s", exc)
        finally:
            self._refreshing = False

    async def nodes(self, force: bool = False) -> list[NodeInfo]:
        if force or time.monotonic() - self.live_at > self.hs.HEARTBEAT_INTERVAL:
            # One query for everyone who needs it now: 500 concurrent starts used to send 500.
            task = self._nodes_query
            if task is None or task.done():
                task = self._nodes_query = asyncio.ensure_future(self._load_nodes())
                task.add_done_callback(_retrieve)
            await asyncio.shield(task)
        return list(self.live.values())

    async def _load_nodes(self) -> None:
        found = await self.db(store.live_nodes)
        self.live = {n.id: n for n in found}
        self.live_at = time.monotonic()

    async def request(self, channel: str, env: dict, timeout: float) -> dict:
        corr = new_correlation_id()
        env["id"] = corr
        env["r"] = self.reply_channel
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending[corr] = fut
        timer = None
        try:
            if await self.rt.transport.publish(channel, wire.dumps(env)) == 0:
                raise _Undelivered(channel)
            # A timer on the future itself: cheaper than asyncio.timeout() (no Timeout object, no task uncancel).
            timer = loop.call_later(timeout, _expire, fut)
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self.pending.pop(corr, None)

    def forget(self, ref: ProcessRef | None) -> None:
        if ref is not None:
            self.cache.pop((ref.label, ref.process_id), None)

    # ---------------------------------------------------------- validation

    def key_for(self, cls: ProcessClass, arg: Any) -> tuple[str, str]:
        label = getattr(cls, "label", None)
        if not label or classes.get(label) is not cls:
            raise UnknownProcessClass(f"{cls.__qualname__} is not a registered HordeProcess class")
        wire.check_data(arg, "start argument", self.hs.MAX_MESSAGE_BYTES, InvalidArgument)
        wire.check_storable(arg, "start argument")
        try:
            pid = cls.process_id(arg)
        except ProcessHubError:
            raise
        except Exception as exc:
            raise InvalidArgument(f"{cls.__qualname__}.process_id({arg!r}) raised {exc!r}") from exc
        return label, wire.check_process_id(pid, self.hs.MAX_ID_LENGTH)

    def check_message(self, message: Any) -> None:
        wire.check_data(message, "message", self.hs.MAX_MESSAGE_BYTES)

    # ---------------------------------------------------------- lookups

    def cached(self, key: tuple[str, str]) -> ProcessRef | None:
        """A cache hit whose node was live at the last refresh (at most two heartbeats ago).

        Plain dict reads: safe from any thread, so a warm sync fetch() needs no loop hop.
        """
        ref = self.cache.get(key)
        if (ref is not None and ref.node_id in self.live
                and time.monotonic() - self.live_at < 2 * self.hs.HEARTBEAT_INTERVAL):
            return ref
        return None

    async def lookup(self, key: tuple[str, str], use_cache: bool = True) -> ProcessRef | None:
        if use_cache and key in self.cache:
            ref = self.cached(key)
            if ref is None:
                await self.nodes()  # the live set is more than two heartbeats old: refresh it now
                ref = self.cached(key)
            else:
                self._keep_live_fresh()
            if ref is not None:
                return ref
        return self._remember(key, await self._lookup_db(key))

    async def _lookup_db(self, key: tuple[str, str]) -> Lookup | None:
        """One registry lookup. Lookups that arrive while a query runs go together in the next one: after a
        failover a client re-learns 1,000 owners in a few statements, not 1,000."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._lookups.setdefault(key, []).append(fut)
        if self._lookup_pump is None or self._lookup_pump.done():
            self._lookup_pump = loop.create_task(self._pump_lookups())
        return await fut

    async def _pump_lookups(self) -> None:
        while self._lookups:
            keys = list(self._lookups)[:LOOKUP_BATCH]
            batch = {k: self._lookups.pop(k) for k in keys}
            try:
                if len(keys) == 1:
                    found = await self.db(store.lookup, *keys[0])
                    rows = {keys[0]: found} if found is not None else {}
                else:
                    rows = await self.db(store.lookup_many, keys)
            except BaseException as exc:
                for futs in batch.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for key, futs in batch.items():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(rows.get(key))

    def _remember(self, key: tuple[str, str], row: Lookup | None) -> ProcessRef | None:
        if row is None or row.status != RUNNING or not row.owner_alive:
            self.cache.pop(key, None)
            if row is not None and row.status == IDLE:
                if len(self._seen_idle) >= SEEN_IDLE_MAX:
                    self._seen_idle.clear()
                self._seen_idle[key] = None
            return None
        self._check_wire(row)
        ref = ProcessRef(row.label, row.process_id, row.node_name or "", row.node_id or "", row.epoch, False,
                         row.channel or "", row.tags, row.metadata)
        self.cache[key] = ref
        return ref

    def _check_wire(self, row: Lookup) -> None:
        """A live owner that speaks another wire version cannot be talked to: say so (a rolling deploy)."""
        if row.owner_alive and row.owner_wire != WIRE_VERSION:
            self.cache.pop((row.label, row.process_id), None)
            raise IncompatibleWireVersion(
                f"{row.label} {row.process_id!r} runs on node {row.node_name!r}, which speaks wire version "
                f"{row.owner_wire}; this client speaks {WIRE_VERSION}: finish the rolling deploy (or move the "
                f"process with a node of its version)")

    def fetch_blocking(self, cls: ProcessClass, arg: Any) -> ProcessRef | None:
        """``fetch`` from a thread that runs no event loop: the cache, else one SELECT in this very thread.

        A cold fetch used to hop to the runtime's loop and from there to a DB
        thread: two thread switches and a coroutine around one SELECT.
        """
        refuse_running_loop()
        key = self.key_for(cls, arg)
        ref = self.cached(key)
        if ref is not None:
            self._keep_live_fresh()
            return ref
        try:
            row = store.lookup(*key)
        except DatabaseError as exc:
            raise DatabaseUnavailable(f"the registry database failed: {exc}") from exc
        return self._remember(key, row)

    # ---------------------------------------------------------- operations

    async def start(self, cls: ProcessClass, arg: Any, timeout: float | None = None, node: str | None = None,
                    tags: Any = (), metadata: Any = None) -> ProcessRef:
        key = self.key_for(cls, arg)
        how = start_with(True, tags, metadata)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.hs.CALL_TIMEOUT)
        return await self._start(key, arg, deadline, node, how)

    async def _start(self, key: tuple[str, str], arg: Any, deadline: float, node: str | None = None,
                     how: StartWith = GET_OR_START) -> ProcessRef:
        loop = asyncio.get_running_loop()
        force = False
        full: set[str] = set()  # nodes that answered "at capacity" to this start
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CallTimeout(f"starting {key[0]} {key[1]!r} timed out")
            live = await self.nodes(force)
            if full:  # nodes that said "at capacity" count as full whatever their last heartbeat said
                capacity = self.hs.MAX_PROCESSES_PER_NODE or 0
                live = [replace(n, load=capacity) if n.id in full else n for n in live]
            try:
                target = self._target(key[0], key[1], live, node, self.hs.MAX_PROCESSES_PER_NODE)
            except ProcessHubError:
                if not force:
                    force = True  # the cached live set may predate a node's (re)join
                    continue
                raise
            env = {"t": wire.START, "l": key[0], "p": key[1], "a": arg}
            if not how.start:
                env = {"t": wire.START, "l": key[0], "p": key[1], "ro": True}  # wake a passivated one only
            if how.tags is not None:
                env["tg"] = list(how.tags)
            if how.metadata is not None:
                env["md"] = how.metadata
            if node is not None:
                env["g"] = True  # guided: rebalancing leaves it where it was put
            if key in self._seen_idle:
                env["wi"] = True  # seen idle: the node wakes the row first instead of inserting, then reading it
            try:
                reply = await self.request(target.channel, env, remaining)
            except _Undelivered:
                self.live.pop(target.id, None)
                force = True
                await asyncio.sleep(min(self.hs.WAIT_SLEEP, max(0.0, deadline - loop.time())))
                continue
            except TimeoutError:
                raise CallTimeout(f"starting {key[0]} {key[1]!r} timed out") from None
            if reply.get("ok"):
                self._seen_idle.pop(key, None)
                d = reply["ref"]
                ref = ProcessRef.from_wire(d, bool(reply.get("created")))
                self.cache[key] = ref if not ref.created else ProcessRef.from_wire(d)  # (cheaper than replace())
                return ref
            if reply.get("err") in (wire.E_FENCED, wire.E_NOT_HERE):
                # That node lost its lease or is draining: ask the registry again.
                force = True
                await asyncio.sleep(min(self.hs.WAIT_SLEEP, max(0.0, deadline - loop.time())))
                continue
            if reply.get("err") == wire.E_AT_CAPACITY and node is None:
                full.add(target.id)  # its load in the registry is a heartbeat old: try the next one
                continue
            raise error_from(reply)

    @staticmethod
    def _target(label: str, process_id: str, live: list[NodeInfo], node: str | None,
                capacity: int | None = None) -> NodeInfo:
        """The node a start goes to: the named one (guided placement), else the rendezvous choice."""
        if node is not None:
            target = next((n for n in live if n.name == node or n.id == node), None)
            if target is None:
                raise NoLiveNodes(f"no live node named {node!r}")
            if not target.can_run(label):
                raise UnknownProcessClass(f"node {target.name!r} cannot run {label} (its class is not installed "
                                          f"there)")
            return target
        target = placement.choose_node(label, process_id, live, capacity)
        if target is not None:
            return target
        if placement.eligible(label, live):
            raise HubAtCapacity(f"every live node that can run {label} runs {capacity} processes "
                                f"(MAX_PROCESSES_PER_NODE)")
        if live:
            raise NoLiveNodes(f"no live node can run {label}: install its app on the nodes")
        raise NoLiveNodes("no node holds a valid lease: start `python manage.py runhub`")

    async def fetch(self, cls: ProcessClass, arg: Any) -> ProcessRef | None:
        return await self.lookup(self.key_for(cls, arg))

    async def call(self, cls: ProcessClass, arg: Any, message: Any, timeout: float | None = None,
                   how: StartWith = GET_OR_START) -> Any:
        key = self.key_for(cls, arg)
        self.check_message(message)
        return await self._send(cls, key, arg, message, timeout or self.hs.CALL_TIMEOUT, wire.CALL, how)

    async def cast(self, cls: ProcessClass, arg: Any, message: Any, how: StartWith = GET_OR_START) -> None:
        key = self.key_for(cls, arg)
        self.check_message(message)
        await self._send(cls, key, arg, message, self.hs.CALL_TIMEOUT, wire.CAST, how)

    # ---------------------------------------------------------- fast paths
    #
    # A call or cast whose target is in the cache (owner live at the last refresh) is published from
    # the caller's own thread (sync) or loop (async, on a loop that is not the runtime's), saving one or
    # two thread switches. The four entry points below share one core: ``_fast_request`` builds the
    # envelope from the cache, ``_fast_outcome`` reads the reply, ``_observed`` times it. A miss, an owner
    # that is gone, or a "not here"/"fenced" answer (nothing was handled) continues on the runtime loop
    # (``_send``) with the time left, where the usual lookups, starts and retries happen.

    def _fast_request(self, key: tuple[str, str], kind: str, message: Any,
                      timeout: float | None) -> tuple[ProcessRef, str, bytes] | None:
        """(cached owner, correlation id, envelope bytes) for a fast-path send, or None on a cache miss."""
        ref = self.cached(key)
        if ref is None:
            return None
        self._keep_live_fresh()
        if kind == wire.CALL:
            corr = new_correlation_id()
            return ref, corr, wire.dumps({"t": kind, "l": key[0], "p": key[1], "m": message, "ttl": timeout,
                                          "id": corr, "r": self.reply_channel})
        return ref, "", wire.dumps({"t": kind, "l": key[0], "p": key[1], "m": message})

    def _fast_outcome(self, key: tuple[str, str], ref: ProcessRef, reply: dict | None, timeout: float) -> Any:
        """The value of a fast-path call, _MISS to continue on the loop path, or the error to raise."""
        if reply is None:
            raise CallTimeout(f"call to {key[0]} {key[1]!r} got no reply within {timeout}s")
        if reply.get("ok"):
            return reply.get("v")
        if reply.get("err") in (wire.E_NOT_HERE, wire.E_FENCED):
            self.rt.loop.call_soon_threadsafe(self.forget, ref)  # runs before the retry on the loop
            return _MISS
        if reply.get("err") in (wire.E_CRASHED, wire.E_NOT_RUNNING):
            # As on the loop path: the cached ref is stale. Dropped here, not on the loop, so that a
            # fetch() right after this call already misses (a dict pop is atomic).
            self.cache.pop(key, None)
        raise error_from(reply)

    def _observed(self, label: str, kind: str, t0: float, value: Any, error: BaseException | None = None) -> Any:
        """Report a fast-path outcome to metrics (not a miss: the loop path reports those itself)."""
        observe = self.metrics_observe
        if observe is not None and value is not _MISS:
            observe(label, kind, time.perf_counter() - t0, error)
        return value

    def call_blocking(self, cls: ProcessClass, arg: Any, message: Any, timeout: float | None = None,
                      how: StartWith = GET_OR_START) -> Any:
        """``call`` from a thread that runs no event loop (a view, a Celery task, the shell).

        On a cache hit the calling thread publishes on its own blocking Redis
        connection and sleeps until the loop thread's reply handler wakes it.
        """
        refuse_running_loop()
        key = self.key_for(cls, arg)
        self.check_message(message)
        timeout = timeout or self.hs.CALL_TIMEOUT
        t0 = time.perf_counter()
        try:
            value = self._observed(key[0], wire.CALL, t0, self._call_fast(key, message, timeout))
        except BaseException as exc:
            raise self._observed(key[0], wire.CALL, t0, exc, exc) from None
        if value is not _MISS:
            return value
        left = max(0.001, timeout - (time.perf_counter() - t0))
        return self.rt.run_sync(self._send(cls, key, arg, message, left, wire.CALL, how))

    def _call_fast(self, key: tuple[str, str], message: Any, timeout: float) -> Any:
        pub = self._blocking
        request = self._fast_request(key, wire.CALL, message, timeout) if pub is not None else None
        if pub is None or request is None:
            return _MISS
        ref, corr, data = request
        waiter = _Blocking()
        self.pending[corr] = waiter  # type: ignore[assignment]
        try:
            if pub.publish(ref.channel, data) == 0:
                return _MISS  # its node is gone; the loop path finds that out too and looks again
            reply = waiter.wait(timeout)
        finally:
            self.pending.pop(corr, None)
        return self._fast_outcome(key, ref, reply, timeout)

    async def acall(self, cls: ProcessClass, arg: Any, message: Any, timeout: float | None = None,
                    how: StartWith = GET_OR_START) -> Any:
        """``call`` from any event loop.

        On the runtime's loop this is ``call``. On another loop (an ASGI server's)
        that keeps calling, the request leaves from that loop on its own
        connection and only the reply hops threads.
        """
        loop = asyncio.get_running_loop()
        if loop is self.rt.loop:
            return await self.call(cls, arg, message, timeout, how)
        pub = self.rt.transport.loop_publisher(loop)
        if pub is None:
            return await self.rt.run_async(self.call(cls, arg, message, timeout, how))
        key = self.key_for(cls, arg)
        self.check_message(message)
        timeout = timeout or self.hs.CALL_TIMEOUT
        t0 = time.perf_counter()
        try:
            value = self._observed(key[0], wire.CALL, t0, await self._acall_fast(pub, loop, key, message, timeout))
        except BaseException as exc:
            raise self._observed(key[0], wire.CALL, t0, exc, exc) from None
        if value is not _MISS:
            return value
        left = max(0.001, timeout - (time.perf_counter() - t0))
        return await self.rt.run_async(self._send(cls, key, arg, message, left, wire.CALL, how))

    async def _acall_fast(self, pub: LoopPublisher, loop: asyncio.AbstractEventLoop, key: tuple[str, str],
                          message: Any, timeout: float) -> Any:
        request = self._fast_request(key, wire.CALL, message, timeout)
        if request is None:
            return _MISS
        ref, corr, data = request
        fut = loop.create_future()
        self.pending[corr] = _OtherLoop(loop, fut)  # type: ignore[assignment]
        try:
            if await pub.publish(ref.channel, data) == 0:
                return _MISS
            timer = loop.call_later(timeout, _expire, fut)
            try:
                reply = await fut
            except TimeoutError:
                reply = None
            finally:
                timer.cancel()
        finally:
            self.pending.pop(corr, None)
        return self._fast_outcome(key, ref, reply, timeout)

    def cast_blocking(self, cls: ProcessClass, arg: Any, message: Any, how: StartWith = GET_OR_START) -> None:
        """``cast`` from a thread that runs no event loop: published from this thread on a cache hit."""
        refuse_running_loop()
        key = self.key_for(cls, arg)
        self.check_message(message)
        pub = self._blocking
        request = self._fast_request(key, wire.CAST, message, None) if pub is not None else None
        if pub is not None and request is not None:
            t0 = time.perf_counter()
            try:
                sent = pub.publish(request[0].channel, request[2])
            except BaseException as exc:
                raise self._observed(key[0], wire.CAST, t0, exc, exc) from None
            if sent:
                self._observed(key[0], wire.CAST, t0, None)
                return
        self.rt.run_sync(self._send(cls, key, arg, message, self.hs.CALL_TIMEOUT, wire.CAST, how))

    async def acast(self, cls: ProcessClass, arg: Any, message: Any, how: StartWith = GET_OR_START) -> None:
        """``cast`` from any event loop; on another loop than the runtime's, published from that loop."""
        loop = asyncio.get_running_loop()
        if loop is self.rt.loop:
            return await self.cast(cls, arg, message, how)
        pub = self.rt.transport.loop_publisher(loop)
        if pub is None:
            return await self.rt.run_async(self.cast(cls, arg, message, how))
        key = self.key_for(cls, arg)
        self.check_message(message)
        request = self._fast_request(key, wire.CAST, message, None)
        if request is not None:
            t0 = time.perf_counter()
            try:
                sent = await pub.publish(request[0].channel, request[2])
            except BaseException as exc:
                raise self._observed(key[0], wire.CAST, t0, exc, exc) from None
            if sent:
                self._observed(key[0], wire.CAST, t0, None)
                return
        await self.rt.run_async(self._send(cls, key, arg, message, self.hs.CALL_TIMEOUT, wire.CAST, how))

    async def _send(self, cls, key, arg, message, timeout: float, kind: str, how: StartWith = GET_OR_START) -> Any:
        observe = self.metrics_observe
        if observe is None:
            return await self._deliver(cls, key, arg, message, timeout, kind, how)
        t0 = time.perf_counter()
        error: BaseException | None = None
        try:
            return await self._deliver(cls, key, arg, message, timeout, kind, how)
        except BaseException as exc:
            error = exc
            raise
        finally:
            observe(key[0], kind, time.perf_counter() - t0, error)

    async def _deliver(self, cls, key, arg, message, timeout: float, kind: str, how: StartWith) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wait_sleep = cls.wait_sleep if cls.wait_sleep is not None else self.hs.WAIT_SLEEP
        wait_max = cls.wait_max if cls.wait_max is not None else self.hs.WAIT_MAX
        not_here = 0
        last_owner = None
        use_cache = True
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CallTimeout(f"{kind} to {key[0]} {key[1]!r} got no reply within {timeout}s")
            ref = await self.lookup(key, use_cache)
            if ref is None:
                if not how.start and not await self._is_idle(key):
                    raise ProcessNotRunning(f"{key[0]} {key[1]!r} is not running (start=False)")
                ref = await self._start(key, arg, deadline, None, how)
            env = {"t": kind, "l": key[0], "p": key[1], "m": message}
            try:
                if kind == wire.CAST:
                    if await self.rt.transport.publish(ref.channel, wire.dumps(env)) == 0:
                        raise _Undelivered(ref.channel)
                    return None
                env["ttl"] = remaining
                reply = await self.request(ref.channel, env, remaining)
            except _Undelivered:
                # The node is gone; the registry will name a new owner within NODE_TTL.
                self.live.pop(ref.node_id, None)
                self.forget(ref)
                use_cache = False
                await asyncio.sleep(min(wait_sleep, max(0.0, deadline - loop.time())))
                continue
            except TimeoutError:
                raise CallTimeout(f"call to {key[0]} {key[1]!r} got no reply within {timeout}s") from None
            if reply.get("ok"):
                return reply.get("v")
            if reply.get("err") in (wire.E_NOT_HERE, wire.E_FENCED):
                self.forget(ref)
                use_cache = False
                # wait_max bounds waiting on one owner; a new owner or epoch (a move in
                # progress, a drain) is progress and starts the count again.
                owner = (ref.node_id, ref.epoch)
                if reply.get("moving"):
                    not_here = 0  # a move (a drain, a rebalance) is under way: its end is progress, wait for it
                else:
                    not_here = not_here + 1 if owner == last_owner else 1
                last_owner = owner
                if reply.get("err") == wire.E_NOT_HERE and not_here > wait_max + 1:
                    raise ProcessUnavailable(f"{key[0]} {key[1]!r} did not become reachable after {wait_max} waits")
                await asyncio.sleep(min(wait_sleep, max(0.0, deadline - loop.time())))
                continue
            if reply.get("err") in (wire.E_CRASHED, wire.E_NOT_RUNNING):
                # It restarted under a new epoch, or ended: the cached ref is stale either way.
                self.forget(ref)
            raise error_from(reply)

    async def _is_idle(self, key: tuple[str, str]) -> bool:
        """A passivated process counts as running for ``start=False``: the message activates it again."""
        row = await self.db(store.lookup, *key)
        return row is not None and row.status == IDLE

    async def send_to_running(self, key: tuple[str, str], message: Any, timeout: float | None,
                              cast: bool = False) -> Any:
        """Call (or cast to) the process ``key`` = (label, process id) only if it runs: for callers that hold a
        registry row, not a start argument (hub.publish, hub.multi_call)."""
        cls = classes.get(key[0])
        self.check_message(message)
        kind = wire.CAST if cast else wire.CALL
        return await self._send(cls, key, None, message, timeout or self.hs.CALL_TIMEOUT, kind, NOT_STARTED)

    # ---------------------------------------------------------- many at once

    async def start_many(self, cls: ProcessClass, args: Iterable[Any], on_failure: str = "continue",
                         timeout: float | None = None, tags: Any = (), metadata: Any = None) -> StartManyResult:
        """Start many processes of one class: one message per target node (and per MAX_MANY ids), each node
        starting its share in group-committed batches. With ``on_failure="rollback"``, any error stops every
        process this call created and raises ``StartManyFailed``."""
        if on_failure not in ("continue", "rollback"):
            raise InvalidArgument(f"on_failure must be 'continue' or 'rollback', not {on_failure!r}")
        how = start_with(True, tags, metadata)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.hs.CALL_TIMEOUT)
        label = getattr(cls, "label", "")
        pending: dict[str, Any] = {}
        errors: dict[str, ProcessHubError] = {}
        for i, arg in enumerate(args):
            try:
                key = self.key_for(cls, arg)
            except ProcessHubError as exc:
                errors[_name_of(cls, arg, i)] = exc
                continue
            pending.setdefault(key[1], arg)
        token = os.urandom(8).hex()  # marks the rows this call creates, for its rollback
        refs: dict[str, ProcessRef] = {}
        try:
            await self._start_many_rounds(label, pending, refs, errors, how, token, deadline)
        except asyncio.CancelledError:
            if on_failure == "rollback":
                await asyncio.shield(self._roll_back(label, token))
            raise
        if errors and on_failure == "rollback":
            await self._roll_back(label, token)
            raise StartManyFailed(errors)
        return StartManyResult(refs, errors)

    async def _start_many_rounds(self, label: str, pending: dict[str, Any], refs: dict[str, ProcessRef],
                                 errors: dict[str, ProcessHubError], how: StartWith, token: str,
                                 deadline: float) -> None:
        loop = asyncio.get_running_loop()
        force = False
        full: set[str] = set()
        capacity = self.hs.MAX_PROCESSES_PER_NODE
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                errors.update({pid: CallTimeout(f"starting {label} {pid!r} timed out") for pid in pending})
                return
            live = await self.nodes(force)
            live = [replace(n, load=capacity or 0) if n.id in full else n for n in live]
            by_node: dict[str, list[str]] = {}
            nodes: dict[str, NodeInfo] = {}
            for pid in list(pending):
                try:
                    target = self._target(label, pid, live, None, capacity)
                except ProcessHubError as exc:
                    if not force:
                        continue  # the next round looks at the database's live set
                    errors[pid] = exc
                    del pending[pid]
                    continue
                by_node.setdefault(target.id, []).append(pid)
                nodes[target.id] = target
            force = True
            envs = []
            for node_id, pids in by_node.items():
                for i in range(0, len(pids), MAX_MANY):
                    chunk = pids[i:i + MAX_MANY]
                    env: dict[str, Any] = {"t": wire.START_MANY, "l": label, "tk": token,
                                           "items": [[pid, pending[pid]] for pid in chunk]}
                    if how.tags is not None:
                        env["tg"] = list(how.tags)
                    if how.metadata is not None:
                        env["md"] = how.metadata
                    envs.append((nodes[node_id], chunk, env))
            replies = await asyncio.gather(*(self.request(n.channel, env, remaining) for n, _, env in envs),
                                           return_exceptions=True)
            retry = False
            for (target, chunk, _), reply in zip(envs, replies, strict=True):
                if isinstance(reply, _Undelivered):
                    self.live.pop(target.id, None)
                    retry = True  # nobody got it: ask the registry again
                    continue
                if isinstance(reply, BaseException) or not reply.get("ok"):
                    if isinstance(reply, TimeoutError):
                        error: ProcessHubError = CallTimeout(f"node {target.name} did not answer in time")
                    elif isinstance(reply, ProcessHubError):
                        error = reply
                    elif isinstance(reply, BaseException):
                        raise reply
                    else:
                        error = error_from(reply)
                    for pid in chunk:
                        errors[pid] = error
                        pending.pop(pid, None)
                    continue
                results = reply.get("results") or {}
                for pid in chunk:
                    result = results.get(pid)
                    if isinstance(result, dict) and result.get("ok"):
                        ref = ProcessRef.from_wire(result["ref"], bool(result.get("created")))
                        refs[pid] = ref
                        self.cache[(label, pid)] = ProcessRef.from_wire(result["ref"])
                        del pending[pid]
                    elif isinstance(result, dict) and result.get("err") in (wire.E_FENCED, wire.E_NOT_HERE):
                        retry = True  # that node lost its lease or is draining: placed again next round
                    elif isinstance(result, dict) and result.get("err") == wire.E_AT_CAPACITY:
                        full.add(target.id)
                        retry = True
                    else:
                        errors[pid] = error_from(result if isinstance(result, dict) else {"err": "invalid"})
                        del pending[pid]
            if retry and pending:
                await asyncio.sleep(min(self.hs.WAIT_SLEEP, max(0.0, deadline - loop.time())))

    async def _roll_back(self, label: str, token: str) -> None:
        """Stop every process a start_many created (rows carrying its token), wherever they run, even on a node
        that died mid-call (its rows are stopped once its lease has ended)."""
        deadline = asyncio.get_running_loop().time() + self.hs.NODE_TTL + self.hs.RECONCILE_INTERVAL + \
            self.hs.CALL_TIMEOUT
        while True:
            pids = await self.db(store.ids_with_token, label, token)
            if not pids:
                return
            await self.stop_many_keys([(label, pid) for pid in pids], max(0.1, deadline -
                                                                          asyncio.get_running_loop().time()))
            if asyncio.get_running_loop().time() > deadline:
                logger.error("processhub: start_many rollback left %d processes of %s running", len(pids), label)
                return

    async def stop_many(self, cls: ProcessClass, args: Iterable[Any], timeout: float | None = None) -> list[str]:
        """Stop many processes of one class; returns the ids of those that were running and are stopped now."""
        keys = [self.key_for(cls, arg) for arg in args]
        return [k[1] for k in await self.stop_many_keys(keys, timeout)]

    async def stop_many_keys(self, keys: list[tuple[str, str]], timeout: float | None = None) -> list[tuple[str, str]]:
        """``stop_many`` by (label, process id): one message per owner node, orphans stopped in the database."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.hs.CALL_TIMEOUT)
        stopped: list[tuple[str, str]] = []
        todo = list(dict.fromkeys(keys))
        while todo and loop.time() < deadline:
            rows: dict[tuple[str, str], Lookup] = {}
            for i in range(0, len(todo), LOOKUP_BATCH):
                rows.update(await self.db(store.lookup_many, todo[i:i + LOOKUP_BATCH]))
            by_owner: dict[str, list[Lookup]] = {}
            again: list[tuple[str, str]] = []
            for key in todo:
                row = rows.get(key)
                if row is None or row.status != RUNNING:
                    self.cache.pop(key, None)
                    continue
                if not row.owner_alive:
                    if await self.db(store.stop_orphan, key[0], key[1], row.epoch):
                        stopped.append(key)
                    else:
                        again.append(key)  # claimed meanwhile: look again
                    continue
                self._check_wire(row)
                by_owner.setdefault(row.channel or "", []).append(row)
            sends = []
            for channel, owned in by_owner.items():
                for label in {r.label for r in owned}:
                    pids = [r.process_id for r in owned if r.label == label]
                    for i in range(0, len(pids), MAX_MANY):
                        env = {"t": wire.STOP_MANY, "l": label, "pids": pids[i:i + MAX_MANY]}
                        sends.append((label, pids[i:i + MAX_MANY], self.request(channel, env,
                                                                                 max(0.01, deadline - loop.time()))))
            replies = await asyncio.gather(*(s[2] for s in sends), return_exceptions=True)
            for (label, pids, _), reply in zip(sends, replies, strict=True):
                done = set(reply.get("stopped") or ()) if isinstance(reply, dict) and reply.get("ok") else set()
                for pid in pids:
                    self.cache.pop((label, pid), None)
                    (stopped if pid in done else again).append((label, pid))
            todo = again
            if todo:
                await asyncio.sleep(min(self.hs.WAIT_SLEEP, max(0.0, deadline - loop.time())))
        return stopped

    async def stop(self, cls: ProcessClass, arg: Any, timeout: float | None = None) -> bool:
        """Stop the process and mark it stopped; False when it was not running."""
        return await self.stop_key(self.key_for(cls, arg), timeout)

    async def stop_key(self, key: tuple[str, str], timeout: float | None = None) -> bool:
        """``stop`` by (label, process id), for callers that hold a registry row (the admin)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.hs.CALL_TIMEOUT)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CallTimeout(f"stopping {key[0]} {key[1]!r} timed out")
            row = await self.db(store.lookup, *key)
            if row is None or row.status != RUNNING:
                self.cache.pop(key, None)
                return False
            self._check_wire(row)
            if not row.owner_alive:
                if await self.db(store.stop_orphan, key[0], key[1], row.epoch):
                    self.cache.pop(key, None)
                    return True
                continue
            try:
                reply = await self.request(row.channel, {"t": wire.STOP, "l": key[0], "p": key[1]}, remaining)
            except _Undelivered:
                await asyncio.sleep(min(self.hs.WAIT_SLEEP, max(0.0, deadline - loop.time())))
                continue
            except TimeoutError:
                raise CallTimeout(f"stopping {key[0]} {key[1]!r} timed out") from None
            self.cache.pop(key, None)
            if reply.get("ok"):
                return True
            if reply.get("err") in (wire.E_NOT_HERE, wire.E_FENCED):
                await asyncio.sleep(min(self.hs.WAIT_SLEEP, max(0.0, deadline - loop.time())))
                continue
            raise error_from(reply)

    async def restart(self, cls: ProcessClass, arg: Any, timeout: float | None = None) -> ProcessRef:
        """Stop the process if it runs, then start it with ``arg``: a fresh activation, a larger epoch."""
        key = self.key_for(cls, arg)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.hs.CALL_TIMEOUT)
        await self.stop_key(key, timeout)
        return await self._start(key, arg, deadline)

    async def move_process(self, cls: ProcessClass, arg: Any, to_node: str, timeout: float | None = None) -> bool:
        """``move`` by start argument (``Room.move(arg, node)``)."""
        label, process_id = self.key_for(cls, arg)
        return await self.move(label, process_id, to_node, timeout)

    async def move(self, label: str, process_id: str, to_node: str | None, timeout: float | None = None) -> bool:
        """Ask the owner to hand the process to ``to_node`` (a live node name or id); fenced by epoch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.hs.CALL_TIMEOUT)
        row = await self.db(store.lookup, label, process_id)
        if row is None or row.status != RUNNING or not row.owner_alive:
            return False
        self._check_wire(row)
        target = None
        if to_node is not None:
            target = next((n for n in await self.nodes(True) if to_node in (n.name, n.id)), None)
            if target is None:
                raise NoLiveNodes(f"no live node named {to_node!r}")
            if not target.can_run(label):
                raise UnknownProcessClass(f"node {target.name!r} cannot run {label}")
            if target.id == row.node_id:
                return False
        env = {"t": wire.MOVE, "l": label, "p": process_id, "to": target.id if target else None, "e": row.epoch}
        try:
            reply = await self.request(row.channel, env, max(0.01, deadline - loop.time()))
        except _Undelivered:
            return False
        except TimeoutError:
            raise CallTimeout(f"moving {label} {process_id!r} timed out") from None
        self.cache.pop((label, process_id), None)
        if reply.get("ok"):
            return True
        if reply.get("err") in (wire.E_NOT_HERE, wire.E_FENCED):
            return False
        raise error_from(reply)

    async def drain(self, node: str, timeout: float | None = None) -> int:
        """Drain a live node (name or id) in place: it takes no new processes and hands every process it runs
        to the other live nodes, but keeps running (status draining) until undrained or stopped.

        Returns how many processes it started to move; the moves finish in the background.
        Raises NoLiveNodes when the node is not live, ProcessUnavailable when no other node could take over.
        """
        reply = await self._node_request(node, wire.DRAIN, "draining", timeout)
        return int(reply.get("n", 0))

    async def undrain(self, node: str, timeout: float | None = None) -> None:
        """Let a drained node (name or id) take new processes again."""
        await self._node_request(node, wire.UNDRAIN, "undraining", timeout)

    async def rebalance(self, timeout: float | None = None) -> int:
        """Ask every live node for one rebalancing sweep; returns how many nodes took the request."""
        nodes = await self.nodes(True)
        replies = await asyncio.gather(*(self.request(n.channel, {"t": wire.REBALANCE}, timeout or self.hs.CALL_TIMEOUT)
                                         for n in nodes), return_exceptions=True)
        return sum(1 for r in replies if isinstance(r, dict) and r.get("ok"))

    async def _node_request(self, node: str, kind: str, doing: str, timeout: float | None) -> dict:
        target = next((n for n in await self.nodes(True) if node in (n.name, n.id)), None)
        if target is None:
            raise NoLiveNodes(f"no live node named {node!r}")
        try:
            reply = await self.request(target.channel, {"t": kind}, timeout or self.hs.CALL_TIMEOUT)
        except _Undelivered:
            raise NoLiveNodes(f"node {node!r} is gone") from None
        except TimeoutError:
            raise CallTimeout(f"{doing} {node!r} timed out") from None
        self.live_at = -1e9  # its status changed: placement must look again
        if reply.get("ok"):
            return reply
        raise error_from(reply)


__all__ = ["Client", "ProcessRef", "refuse_running_loop"]
