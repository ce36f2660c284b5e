"""Django database connections in processhub's own threads: hygiene around each call, and closing them.

Each DB thread (and each thread that runs plain ``def`` callbacks) owns one
Django connection. ``with_connection`` is what channels' ``database_sync_to_async``
does around every call, made cheaper for threads in steady use.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections

T = TypeVar("T")

# A DB thread's connection is checked (and dropped if broken or older than CONN_MAX_AGE) before a call once it
# has been idle this long, or not checked for CHECK_EVERY; and always after a call that raised.
IDLE_CHECK = 1.0
CHECK_EVERY = 30.0
_db_thread = threading.local()


def with_connection(fn: Callable[..., T], args: tuple) -> T:
    """Run ``fn(*args)`` in a DB thread with Django's connection hygiene.

    Calling ``close_old_connections()`` around every call made Django health-check
    the connection with an extra ``SELECT 1`` round trip on every statement
    (CONN_HEALTH_CHECKS). A connection in steady use is skipped; one that was idle
    is checked first, so a database restart during a quiet period still costs no
    failed call, and one that errored is dropped.
    """
    now = time.monotonic()
    if now - getattr(_db_thread, "used", -1e9) > IDLE_CHECK or now - getattr(_db_thread, "checked", -1e9) > CHECK_EVERY:
        close_old_connections()
        _db_thread.checked = now
    try:
        result = fn(*args)
    except BaseException:
        close_old_connections()
        _db_thread.used = -1e9
        raise
    _db_thread.used = time.monotonic()
    return result


def close_pool_connections(pool: concurrent.futures.ThreadPoolExecutor, workers: int) -> None:
    """Close the database connection of every thread of ``pool`` (each thread owns its own), then shut it down.

    A barrier makes each of the pool's threads take exactly one closing task.
    """
    from django.db import connections

    barrier = threading.Barrier(workers, timeout=2)

    def close_here() -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        connections.close_all()

    futures = [pool.submit(close_here) for _ in range(workers)]
    concurrent.futures.wait(futures, timeout=5)
    pool.shutdown(wait=False)


def call(fn: Callable[..., Any], args: tuple) -> Any:
    """``with_connection`` with its arguments as one tuple: for ``run_in_executor``."""
    return with_connection(fn, args)
