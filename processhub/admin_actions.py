"""What the admin's actions do, as plain functions over registry rows (the tests call them directly).

Every action goes through the client API, the same code path as
``HordeProcess.stop()`` / ``start()`` and ``Client.move()`` / ``drain()``: the
admin never writes a registry row itself, so every change is fenced by epoch
and made by the node that owns the process.

Restart is stop + start: it works for running, stopped and failed processes
alike, runs ``terminate("shutdown")`` and a fresh ``init()`` (no handoff state
carried over, unlike a move), clears the restart counter and the last error,
and places the process by the default (rendezvous) placement.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import registry
from .exceptions import InvalidArgument, NoLiveNodes, ProcessHubError
from .models import Node, NodeStatus, Process, ProcessStatus
from .runtime import get_runtime

DONE, SKIPPED, FAILED = "done", "skipped", "failed"

# Actions run concurrently on the runtime loop, this many at a time.
CONCURRENCY = 16


@dataclass(frozen=True)
class Outcome:
    """What an action did to one row: ``status`` is done, skipped (nothing to do) or failed."""

    obj: Any
    status: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == DONE


def _run(objs: Iterable[Any], one: Callable[[Any, Any], Awaitable[Outcome]], per_item: float) -> list[Outcome]:
    """Run ``one(client, obj)`` for every row on the runtime loop; errors become ``failed`` outcomes."""
    objs = list(objs)
    if not objs:
        return []
    rt = get_runtime()

    async def run_all() -> list[Outcome]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def guarded(obj: Any) -> Outcome:
            async with gate:
                try:
                    return await one(rt.client, obj)
                except ProcessHubError as exc:
                    return Outcome(obj, FAILED, f"{type(exc).__name__}: {exc}")

        return list(await asyncio.gather(*(guarded(o) for o in objs)))

    # Each operation has its own timeout; this bound only guards against a wedged loop.
    rounds = -(-len(objs) // CONCURRENCY)
    return rt.run_sync(run_all(), timeout=rounds * per_item + 5.0)


def _timeout(timeout: float | None) -> float:
    return timeout or get_runtime().client.hs.CALL_TIMEOUT


def stop_processes(processes: Iterable[Process], timeout: float | None = None) -> list[Outcome]:
    """Stop each process (terminate('shutdown'), row marked stopped), as ``HordeProcess.stop()`` does."""
    t = _timeout(timeout)

    async def one(client, p: Process) -> Outcome:
        if await client.stop_key((p.label, p.process_id), t):
            return Outcome(p, DONE, "stopped")
        return Outcome(p, SKIPPED, "was not running")

    return _run(processes, one, t)


def restart_processes(processes: Iterable[Process], timeout: float | None = None) -> list[Outcome]:
    """Stop (when running) then start again with the row's start argument: a fresh activation, epoch + 1."""
    t = _timeout(timeout)

    async def one(client, p: Process) -> Outcome:
        cls = registry.get(p.label)
        key = client.key_for(cls, p.arg)
        if key[1] != p.process_id:
            raise InvalidArgument(f"{p.label}.process_id({p.arg!r}) is {key[1]!r}, not {p.process_id!r}")
        await client.stop_key(key, t)
        ref = await client.start(cls, p.arg, t)
        return Outcome(p, DONE, f"restarted on {ref.node} (epoch {ref.epoch})")

    return _run(processes, one, 2 * t)


def move_processes(processes: Iterable[Process], to_node: str, timeout: float | None = None) -> list[Outcome]:
    """Hand each running process to the live node ``to_node`` (name or incarnation id), with handoff.

    Guided placement through ``Client.move``: the owner moves it only if the
    row still has the epoch the client read, so a concurrent takeover or move wins.
    """
    from . import store

    t = _timeout(timeout)
    target = next((n for n in store.live_nodes() if to_node in (n.name, n.id)), None)

    async def one(client, p: Process) -> Outcome:
        if target is None:
            raise NoLiveNodes(f"no live node named {to_node!r}")
        if p.status != ProcessStatus.RUNNING:
            return Outcome(p, SKIPPED, f"is {p.status}")
        if await client.move(p.label, p.process_id, target.id, t):
            return Outcome(p, DONE, f"moved to {target.name}")
        row = await client.lookup((p.label, p.process_id), use_cache=False)
        if row is not None and row.node_id == target.id:
            return Outcome(p, SKIPPED, f"already on {target.name}")
        return Outcome(p, SKIPPED, "not moved: not running, or it moved or restarted meanwhile")

    return _run(processes, one, t)


def drain_nodes(nodes: Iterable[Node], timeout: float | None = None) -> list[Outcome]:
    """Drain each node in place: it takes no new processes and hands its processes to the other live nodes.

    The node keeps running as ``draining`` until it is stopped; the moves finish
    in the background (watch its process count fall). Refused for the last live node.
    """
    t = _timeout(timeout)

    async def one(client, n: Node) -> Outcome:
        if n.status != NodeStatus.UP:
            return Outcome(n, SKIPPED, f"is {n.status}")
        count = await client.drain(n.id, t)
        return Outcome(n, DONE, f"draining: moving {count} processes to the other nodes")

    # One at a time: each drain must see the others that are still up.
    outcomes = []
    for node in nodes:
        outcomes += _run([node], one, t)
    return outcomes


def live_node_choices() -> list[tuple[str, str]]:
    """(incarnation id, name) of the nodes that take new processes, for a "move to" field."""
    from . import store

    return sorted(((n.id, n.name) for n in store.live_nodes()), key=lambda c: c[1])
