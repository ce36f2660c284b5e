"""One hub runtime per OS process: an event loop, a transport, a client, maybe a node.

Sync callers (views, Celery tasks, the shell) hand coroutines to the runtime's
loop instead of opening a loop, a connection and a reply subscription per call.
In ``runhub`` the runtime's loop is the node's main loop; elsewhere it is a
daemon thread started on first use. A fork (Celery prefork) gets a new runtime.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from .client import Client, refuse_running_loop
from .conf import hub_settings
from .dbthreads import close_pool_connections, with_connection
from .exceptions import SyncCallFromAsyncContext
from .transport import make_transport


class HostedNode(Protocol):
    """The node a runtime hosts, if any (the node's package imports this module, not the reverse)."""

    name: str

    async def drain(self) -> None: ...
    def close(self) -> None: ...


logger = logging.getLogger(__name__)
T = TypeVar("T")


class Runtime:
    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        hs = hub_settings()
        self.pid = os.getpid()
        self.loop = loop
        self.thread = thread
        self.transport = make_transport(hs.transport, hs)
        self.client = Client(self)
        self.node: HostedNode | None = None  # set when a node runs in this OS process
        # Thread pools for blocking database work: one reserved for heartbeats,
        # so lease renewal never queues behind slow reconcile statements.
        self.db_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="processhub-db")
        self.handler_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="processhub-sync")

    async def open(self) -> None:
        await self.transport.start()
        await self.client.open()

    async def db(self, fn: Callable[..., T], *args: Any, pool: concurrent.futures.Executor | None = None) -> T:
        """Run a blocking ORM function in a DB thread, with Django's connection hygiene."""
        return await self.loop.run_in_executor(pool or self.db_pool, with_connection, fn, args)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the runtime loop from a thread that is not running a loop."""
        try:
            refuse_running_loop()
        except SyncCallFromAsyncContext:
            coro.close()
            raise
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the runtime loop from any loop."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


_runtime: Runtime | None = None
_lock = threading.Lock()


# This OS process's pid, kept current by a fork hook: os.getpid() is a system call, and get_runtime() runs
# on every call/cast.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_runtime() -> Runtime:
    """The runtime of this OS process, started on first use (and again after a fork)."""
    rt = _runtime
    if rt is not None and rt.pid == _pid:
        return rt
    with _lock:
        rt = _runtime
        if rt is not None and rt.pid == os.getpid():
            return rt
        return _start_thread_runtime()


def _start_thread_runtime() -> Runtime:
    global _runtime
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=_serve, args=(loop, ready), name="processhub-runtime", daemon=True)
    thread.start()
    ready.wait()
    rt = Runtime(loop, thread)
    try:
        asyncio.run_coroutine_threadsafe(rt.open(), loop).result(30)
    except BaseException:
        # A runtime that could not open (a wrong Redis password, say) must not keep reconnecting and
        # logging in the background: the next call makes a fresh one.
        try:
            asyncio.run_coroutine_threadsafe(rt.transport.close(), loop).result(5)
        except Exception:  # noqa: BLE001 - cleaning up after the error that is raised below
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        rt.db_pool.shutdown(wait=False)
        rt.handler_pool.shutdown(wait=False)
        raise
    _runtime = rt
    if hub_settings().embedded and _embedded_starter is not None:
        _embedded_starter(rt)
    return rt


# Starts the embedded node of a runtime; set by the app's ready() (processhub.embedded), so that this
# module, which the node's modules use, does not import them.
_embedded_starter: Callable[[Runtime], None] | None = None


def set_embedded_starter(starter: Callable[[Runtime], None]) -> None:
    global _embedded_starter
    _embedded_starter = starter


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


async def install_runtime() -> Runtime:
    """Make the running loop this OS process's runtime (used by ``runhub``)."""
    global _runtime
    with _lock:
        rt = Runtime(asyncio.get_running_loop(), None)
        _runtime = rt
    await rt.open()
    return rt


def reset_runtime(shutdown: bool = True) -> None:
    """Forget this process's runtime; with ``shutdown``, drain its node and stop its thread (tests)."""
    global _runtime
    with _lock:
        rt, _runtime = _runtime, None
    if rt is None or rt.pid != os.getpid() or rt.thread is None or not shutdown:
        return

    async def close() -> None:
        if rt.node is not None:
            await rt.node.drain()
            rt.node.close()
        await rt.transport.close()
        close_pool_connections(rt.db_pool, 4)
        close_pool_connections(rt.handler_pool, 8)

    try:
        asyncio.run_coroutine_threadsafe(close(), rt.loop).result(30)
    except Exception:
        logger.exception("processhub: closing the runtime failed")
    rt.loop.call_soon_threadsafe(rt.loop.stop)
    rt.thread.join(5)
