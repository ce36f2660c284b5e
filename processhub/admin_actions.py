"""What the admin's actions do, as plain functions over registry rows (the tests call them directly).

Every action goes through the client API, the same code path as
``HordeProcess.stop()`` / ``start()`` and ``Client.move()`` / ``drain()``: the
admin never writes a registry row itself, so every change is fenced by epoch
and made by the node that owns the process.

Restart is stop + start: it works for running, stopped and failed processes
alike, runs ``terminate("shutdown")`` and a fresh ``init()`` (no handoff state
carried over, unlike a move), clears the restart counter and the last error,
and places the process by the default (rendezvous) placement.

Selections of more than ``INLINE_MAX_ROWS`` rows run in the background
(``start_bulk``): the request returns at once and the web process's hub
runtime works the rows off, writing its progress to a ``BulkOperation`` row.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import classes
from .exceptions import InvalidArgument, NoLiveNodes, ProcessHubError
from .masking import mask_text
from .models import BulkOperation, BulkStatus, Node, NodeStatus, Process, ProcessStatus
from .runtime import get_runtime

logger = logging.getLogger(__name__)

DONE, SKIPPED, FAILED = "done", "skipped", "failed"

# Actions run concurrently on the runtime loop, this many at a time.
CONCURRENCY = 16
# Larger selections run in the background: a request must not wait minutes for 1,000 restarts.
INLINE_MAX_ROWS = 20
# Seconds between two progress writes of a background operation, and failure lines kept on its row.
PROGRESS_EVERY = 0.5
MAX_ERROR_LINES = 50


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
                    return Outcome(obj, FAILED, _failure(exc))

        return list(await asyncio.gather(*(guarded(o) for o in objs)))

    # Each operation has its own timeout; this bound only guards against a wedged loop.
    rounds = -(-len(objs) // CONCURRENCY)
    return rt.run_sync(run_all(), timeout=rounds * per_item + 5.0)


def _failure(exc: BaseException) -> str:
    # Exception texts can carry a REDIS_URL or DATABASE_URL: they reach admin pages and rows.
    return mask_text(f"{type(exc).__name__}: {exc}")


def _timeout(timeout: float | None) -> float:
    return timeout or get_runtime().client.hs.CALL_TIMEOUT


ItemAction = Callable[[Any, Any], Awaitable[Outcome]]


def _stopper(t: float) -> ItemAction:
    async def one(client, p: Process) -> Outcome:
        if await client.stop_key((p.label, p.process_id), t):
            return Outcome(p, DONE, "stopped")
        return Outcome(p, SKIPPED, "was not running")

    return one


def _restarter(t: float) -> ItemAction:
    async def one(client, p: Process) -> Outcome:
        cls = classes.get(p.label)
        key = client.key_for(cls, p.arg)
        if key[1] != p.process_id:
            raise InvalidArgument(f"{p.label}.process_id(...) of the stored argument is {key[1]!r}, "
                                  f"not {p.process_id!r}")
        await client.stop_key(key, t)
        ref = await client.start(cls, p.arg, t)
        return Outcome(p, DONE, f"restarted on {ref.node} (epoch {ref.epoch})")

    return one


def _mover(t: float, to_node: str, target: Any) -> ItemAction:
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

    return one


def _live_target(to_node: str) -> Any:
    """The live node named ``to_node`` (name or incarnation id), or None."""
    from . import store

    return next((n for n in store.live_nodes() if to_node in (n.name, n.id)), None)


def stop_processes(processes: Iterable[Process], timeout: float | None = None) -> list[Outcome]:
    """Stop each process (terminate('shutdown'), row marked stopped), as ``HordeProcess.stop()`` does."""
    t = _timeout(timeout)
    return _run(processes, _stopper(t), t)


def restart_processes(processes: Iterable[Process], timeout: float | None = None) -> list[Outcome]:
    """Stop (when running) then start again with the row's start argument: a fresh activation, epoch + 1."""
    t = _timeout(timeout)
    return _run(processes, _restarter(t), 2 * t)


def move_processes(processes: Iterable[Process], to_node: str, timeout: float | None = None) -> list[Outcome]:
    """Hand each running process to the live node ``to_node`` (name or incarnation id), with handoff.

    Guided placement through ``Client.move``: the owner moves it only if the
    row still has the epoch the client read, so a concurrent takeover or move wins.
    """
    t = _timeout(timeout)
    return _run(processes, _mover(t, to_node, _live_target(to_node)), t)


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


def undrain_nodes(nodes: Iterable[Node], timeout: float | None = None) -> list[Outcome]:
    """Let each drained node take new processes again (``hub.undrain``)."""
    t = _timeout(timeout)

    async def one(client, n: Node) -> Outcome:
        if n.status != NodeStatus.DRAINING:
            return Outcome(n, SKIPPED, f"is {n.status}")
        await client.undrain(n.id, t)
        return Outcome(n, DONE, "takes new processes again")

    return _run(nodes, one, t)


def rebalance_cluster(anchor: Any, timeout: float | None = None) -> list[Outcome]:
    """Ask every live node for one rebalancing sweep (``hub.rebalance``); one outcome, reported on ``anchor``."""
    from . import hub

    plan = hub.rebalance_plan()
    if not plan:
        return [Outcome(anchor, SKIPPED, "every process is where placement puts it")]
    rt = get_runtime()
    asked = rt.run_sync(rt.client.rebalance(_timeout(timeout)))
    return [Outcome(anchor, DONE, f"{len(plan)} processes to move; {asked} nodes rebalancing")]


def live_node_choices() -> list[tuple[str, str]]:
    """(incarnation id, name) of the nodes that take new processes, for a "move to" field."""
    from . import store

    return sorted(((n.id, n.name) for n in store.live_nodes()), key=lambda c: c[1])


# ====================================================================== background (bulk) operations

# Futures of the operations running in this OS process: the loop keeps only weak references to its tasks.
_background: set[concurrent.futures.Future] = set()


def start_bulk(kind: str, objs: list[Process], user: Any = None, to_node: str = "",
               timeout: float | None = None) -> BulkOperation:
    """Start ``kind`` (stop, restart or move to ``to_node``) on ``objs`` in the background; return its progress row.

    The rows are worked off on this OS process's hub runtime, ``CONCURRENCY``
    at a time, each through the same client call as the inline action; the
    counts, the first failures and one admin log entry per done row are
    written every ``PROGRESS_EVERY`` seconds. If this process exits first, the
    row stays ``running`` with its last counts (``updated_at`` tells how old).
    """
    t = _timeout(timeout)
    target = _live_target(to_node) if kind == "move" else None
    factories: dict[str, Callable[[], ItemAction]] = {
        "stop": lambda: _stopper(t),
        "restart": lambda: _restarter(t),
        "move": lambda: _mover(t, to_node, target),
    }
    one = factories[kind]()
    user = user if user is not None and user.is_authenticated else None
    op = BulkOperation.objects.create(kind=kind, target=target.name if target else to_node, total=len(objs),
                                      created_by=user)
    rt = get_runtime()
    future = asyncio.run_coroutine_threadsafe(_run_tracked(rt, _Progress(op, user), objs, one), rt.loop)
    _background.add(future)
    future.add_done_callback(_background.discard)
    return op


class _Progress:
    """The counts of one background operation, written to its row (on a DB thread of the runtime)."""

    def __init__(self, op: BulkOperation, user: Any) -> None:
        self.op_id = op.pk
        self.kind = op.kind
        self.user_id = user.pk if user is not None else None
        self.counts = {DONE: 0, SKIPPED: 0, FAILED: 0}
        self.errors: list[str] = []

    def save(self, outcomes: list[Outcome], status: str) -> None:
        from django.utils import timezone

        for o in outcomes:
            self.counts[o.status] += 1
            if o.status == FAILED and len(self.errors) < MAX_ERROR_LINES:
                self.errors.append(mask_text(f"{o.obj}: {o.message}"))
        BulkOperation.objects.filter(pk=self.op_id).update(
            done=self.counts[DONE], skipped=self.counts[SKIPPED], failed=self.counts[FAILED],
            errors="\n".join(self.errors), status=status, updated_at=timezone.now(),
        )
        done = [o for o in outcomes if o.status == DONE]
        if done and self.user_id is not None:
            self._log(done)

    def _log(self, done: list[Outcome]) -> None:
        """One admin log entry per done row, as the inline actions write them."""
        from django.contrib.admin.models import CHANGE, LogEntry
        from django.contrib.contenttypes.models import ContentType

        ct = ContentType.objects.get_for_model(Process)
        LogEntry.objects.bulk_create([
            LogEntry(user_id=self.user_id, content_type_id=ct.id, object_id=str(o.obj.pk),
                     object_repr=str(o.obj)[:200], action_flag=CHANGE, change_message=f"{self.kind}: {o.message}")
            for o in done
        ])


async def _run_tracked(rt: Any, progress: _Progress, objs: list[Any], one: ItemAction) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    finished: list[Outcome] = []  # since the last progress write

    async def guarded(obj: Any) -> None:
        async with gate:
            try:
                outcome = await one(rt.client, obj)
            except ProcessHubError as exc:
                outcome = Outcome(obj, FAILED, _failure(exc))
            except Exception as exc:
                # Not a hub refusal (a database error, a bug): recorded on the row, the other rows go on.
                logger.exception("processhub: background %s of %s failed", progress.kind, obj)
                outcome = Outcome(obj, FAILED, _failure(exc))
        finished.append(outcome)

    pending = {asyncio.ensure_future(guarded(o)) for o in objs}
    try:
        while pending:
            _, pending = await asyncio.wait(pending, timeout=PROGRESS_EVERY)
            batch = finished[:]
            finished.clear()
            await rt.db(progress.save, batch, BulkStatus.RUNNING if pending else BulkStatus.DONE)
    except Exception:
        # The progress could not be written (database gone): stop rather than act without a record.
        logger.exception("processhub: background %s (operation %s) stopped", progress.kind, progress.op_id)
        for task in pending:
            task.cancel()
        await rt.db(progress.save, [], BulkStatus.FAILED)
