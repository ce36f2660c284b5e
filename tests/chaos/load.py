"""Client-side drivers of the chaos suite: a steady call load (every outcome timed and kept), bulk starts."""
from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from processhub.exceptions import ProcessHubError
from processhub.runtime import get_runtime


@dataclass(frozen=True, slots=True)
class Outcome:
    t: float  # wall clock when the call was made
    took: float
    error: str  # "" on success, else the exception's class name
    pid: str = ""
    detail: str = ""


@dataclass
class LoadStats:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.outcomes)

    def errors(self) -> Counter:
        return Counter(o.error for o in self.outcomes if o.error)

    def success_rate(self, outside: list[tuple[float, float]] | None = None) -> float:
        """Share of successful calls; with ``outside``, only calls made outside those (start, end) windows."""
        chosen = [o for o in self.outcomes if not outside or not any(a <= o.t <= b for a, b in outside)]
        if not chosen:
            return 1.0
        return sum(1 for o in chosen if not o.error) / len(chosen)

    def counted(self, outside: list[tuple[float, float]]) -> int:
        return sum(1 for o in self.outcomes if not any(a <= o.t <= b for a, b in outside))


class CallLoad:
    """Calls random ``(cls, arg)`` targets at about ``rate`` per second until stopped.

    Runs on the client runtime's loop (``workers`` calls in flight at most); a
    call that raises anything but a ``ProcessHubError`` is recorded under
    ``"UNNAMED:<type>"`` so the caller can fail on it (DESIGN I7).
    """

    def __init__(self, targets: list[tuple[type, Any]], rate: float = 40.0, workers: int = 8, timeout: float = 5.0,
                 seed: int = 0) -> None:
        self.targets, self.rate, self.workers, self.timeout = targets, rate, workers, timeout
        self.stats = LoadStats()
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CallLoad:
        rt = get_runtime()
        self._thread = threading.Thread(target=rt.run_sync, args=(self._run(),), name="chaos-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> LoadStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.stats

    async def _run(self) -> None:
        client = get_runtime().client
        sem = asyncio.Semaphore(self.workers)
        interval = 1.0 / self.rate
        tasks: set[asyncio.Task] = set()

        async def one(target) -> None:
            cls, arg = target
            t, t0 = time.time(), time.monotonic()
            error = detail = ""
            try:
                await client.call(cls, arg, {"op": "ping"}, timeout=self.timeout)
            except ProcessHubError as exc:
                error, detail = type(exc).__name__, str(exc)[:200]
            except Exception as exc:  # noqa: BLE001 - an unnamed error is a finding, kept for the verdict
                error, detail = f"UNNAMED:{type(exc).__name__}", repr(exc)[:200]
            finally:
                sem.release()
            pid = str(arg.get("id", "")) if isinstance(arg, dict) else str(arg)
            self.stats.outcomes.append(Outcome(t, time.monotonic() - t0, error, pid, detail))

        next_at = time.monotonic()
        while not self._stop.is_set():
            await sem.acquire()
            task = asyncio.ensure_future(one(self._rng.choice(self.targets)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 2)


def run_many(coros_factory, items: list, concurrency: int = 64, timeout: float = 120.0) -> list[Any]:
    """Run ``coros_factory(item)`` for every item on the client runtime, ``concurrency`` at a time.

    Returns results in order; an exception is returned in place of its result.
    """
    rt = get_runtime()

    async def go():
        sem = asyncio.Semaphore(concurrency)

        async def one(item):
            async with sem:
                try:
                    return await coros_factory(item)
                except Exception as exc:  # noqa: BLE001 - handed back to the caller, which judges it
                    return exc

        return await asyncio.gather(*(one(i) for i in items))

    return rt.run_sync(go(), timeout)


def start_many(cls, args: list, concurrency: int = 64, timeout: float = 120.0) -> list:
    """Start many processes at once (the nodes group-commit them); raise on the first failure."""
    client = get_runtime().client
    results = run_many(lambda a: client.start(cls, a, timeout=30), args, concurrency, timeout)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise AssertionError(f"{len(errors)} of {len(args)} starts failed, e.g. {errors[0]!r}")
    return results
