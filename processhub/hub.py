"""The hub as an API: queries over the registry, node health, operations, and process groups.

Everything here works from any Django code in the cluster (views, Celery tasks,
the shell, a ``runhub`` node's own processes). Sync functions read the database
in the calling thread; each has an ``a``-prefixed async twin for event loops.

* Queries: ``process_list`` (lazy, paginated: it never loads a million rows at
  once), ``match_tag``, ``nodes``, ``is_alive``, ``is_partitioned``.
* Operations: ``drain``/``undrain`` a node (class-level ``move`` and ``restart``
  live on ``HordeProcess``), ``rebalance``.
* Process groups (as Swarm's): ``members``, ``publish`` (a cast to each member)
  and ``multi_call`` (id -> reply or error). Processes join with
  ``self.join(group)``; membership is stored with their row, so it follows them
  through restarts, moves and failover.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError

from . import store
from .exceptions import DatabaseUnavailable, InvalidArgument, NoLiveNodes, ProcessHubError
from .runtime import get_runtime
from .values import DOWN, FAILED, IDLE, RUNNING, STOPPED, ProcessRef

__all__ = [
    "ProcessList", "NodeState", "process_list", "aprocess_list", "match_tag", "nodes", "anodes", "is_alive",
    "is_partitioned", "drain", "adrain", "undrain", "aundrain", "members", "amembers", "publish", "apublish",
    "multi_call", "amulti_call", "rebalance", "arebalance", "rebalance_plan",
]

NodeState = store.NodeState
STATUSES = (RUNNING, STOPPED, FAILED, IDLE)
PAGE = 1000  # rows per query of a ProcessList


def _ref(row: store.ListedRow) -> ProcessRef:
    live = row.status == RUNNING
    return ProcessRef(row.label, row.process_id, (row.node_name or "") if live else "",
                      (row.node_id or "") if live else "", row.epoch, False, row.channel or "", row.tags, row.metadata,
                      row.status)


class ProcessList:
    """Processes matching a query, read a page (``PAGE`` rows, by label and id) at a time as you iterate.

    ``list(hub.process_list(tag="org:7"))`` reads them all; ``page(limit, after)`` reads one page
    (pass the last ``ProcessRef`` of a page as ``after`` for the next).
    """

    def __init__(self, label: str | None, tag: str | None, node: str | None, status: str | None,
                 group: str | None = None) -> None:
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"status must be one of {STATUSES} or None, not {status!r}")
        for what, value in (("label", label), ("tag", tag), ("node", node), ("group", group)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
        self.query = (label, tag, group, node, status)

    def page(self, limit: int = PAGE, after: ProcessRef | None = None) -> list[ProcessRef]:
        return self._read(max(1, min(int(limit), 10 * PAGE)), after)

    def _read(self, limit: int, after: ProcessRef | None) -> list[ProcessRef]:
        label, tag, group, node, status = self.query
        cursor = None if after is None else (after.label, after.process_id)
        try:
            return store.process_refs_page(label, tag, group, node, status, cursor, limit)
        except DatabaseError as exc:
            raise DatabaseUnavailable(f"the registry database failed: {exc}") from exc

    def __iter__(self) -> Iterator[ProcessRef]:
        after = None
        while True:
            # One row more than a page says whether there is a next one: a full last page costs no empty read.
            page = self._read(PAGE + 1, after)
            if len(page) <= PAGE:
                yield from page
                return
            del page[PAGE:]
            yield from page
            after = page[-1]


def process_list(*, label: str | None = None, tag: str | None = None, node: str | None = None,
                 status: str | None = RUNNING, local: bool = False) -> ProcessList | list[ProcessRef]:
    """Processes by class label, tag, node (name or incarnation id) and status.

    ``status="running"`` (the default) counts only processes whose node holds a live lease; "stopped",
    "failed", "idle" or None (any) read the rows as they are. ``local=True`` lists what the node in this
    OS process runs right now, from memory (an empty list where no node runs).
    """
    if local:
        return _local(label, tag)
    return ProcessList(label, tag, node, status)


async def aprocess_list(*, label: str | None = None, tag: str | None = None, node: str | None = None,
                        status: str | None = RUNNING, local: bool = False, limit: int = PAGE,
                        after: ProcessRef | None = None) -> list[ProcessRef]:
    """``process_list`` from async code: one page (``limit`` rows after ``after``)."""
    if local:
        return _local(label, tag)
    found = ProcessList(label, tag, node, status)
    return await sync_to_async(found.page, thread_sensitive=False)(limit, after)


def _local(label: str | None, tag: str | None) -> list[ProcessRef]:
    node = get_runtime().node
    acts = list(getattr(node, "activations", {}).values())
    return sorted((a.ref() for a in acts if (label is None or a.label == label) and (tag is None or tag in a.tags)),
                  key=lambda r: (r.label, r.process_id))


def match_tag(tag: str) -> ProcessList:
    """Running processes carrying ``tag`` (ProcessHub's ``match_tag``)."""
    return ProcessList(None, tag, None, RUNNING)


# ---------------------------------------------------------------- nodes and health


def nodes() -> list[NodeState]:
    """Every node incarnation that is not down: name, id, status, lease valid, running processes, host, pid."""
    try:
        return store.node_states()
    except DatabaseError as exc:
        raise DatabaseUnavailable(f"the registry database failed: {exc}") from exc


async def anodes() -> list[NodeState]:
    return await sync_to_async(nodes, thread_sensitive=False)()


def _named(node: str) -> NodeState | None:
    return next((n for n in nodes() if node in (n.name, n.id)), None)


def is_alive(node: str | None = None) -> bool:
    """Whether a node holds a valid lease: the node in this OS process (``None``, a load balancer's health
    probe of a ``runhub`` or a Celery worker node), or the named one (by the database's clock)."""
    if node is None:
        here = get_runtime().node
        if here is None:
            raise NoLiveNodes("no node runs in this OS process: name one (is_alive('web1'))")
        return bool(here.lease_valid())  # type: ignore[attr-defined]
    state = _named(node)
    return state is not None and state.lease_valid and state.status != DOWN


def is_partitioned(node: str | None = None) -> bool:
    """Whether a node runs but is cut off from the hub.

    For the node in this OS process: it has no valid lease (it cannot reach the database) or its
    transport is disconnected (it cannot reach Redis). For a named node: its row is not marked down but
    its lease ran out in the database's clock (cut off, or dead and not yet noticed).
    """
    if node is None:
        rt = get_runtime()
        here = rt.node
        if here is None:
            raise NoLiveNodes("no node runs in this OS process: name one (is_partitioned('web1'))")
        connected = getattr(rt.transport, "connected", None)
        return not here.lease_valid() or (connected is not None and not connected.is_set())  # type: ignore
    state = _named(node)
    return state is not None and not state.lease_valid


# ---------------------------------------------------------------- operations


def drain(node: str, timeout: float | None = None) -> int:
    """Drain a node (name or id) in place: it takes no new processes and moves its processes to the other
    nodes, but keeps running until undrained or stopped. Returns how many start to move."""
    rt = get_runtime()
    return rt.run_sync(rt.client.drain(node, timeout))


async def adrain(node: str, timeout: float | None = None) -> int:
    rt = get_runtime()
    return await rt.run_async(rt.client.drain(node, timeout))


def undrain(node: str, timeout: float | None = None) -> None:
    """Let a drained node take new processes again."""
    rt = get_runtime()
    rt.run_sync(rt.client.undrain(node, timeout))


async def aundrain(node: str, timeout: float | None = None) -> None:
    rt = get_runtime()
    await rt.run_async(rt.client.undrain(node, timeout))


def rebalance_plan(limit: int | None = None) -> list[tuple[ProcessRef, str]]:
    """The moves a rebalancing sweep would make now: (process, the node it would move to), by reading the
    registry (no node is asked). Guided processes stay where they were put and are not listed."""
    from . import placement
    from .conf import hub_settings
    from .values import UP

    live = [n for n in store.live_nodes() if n.status == UP]
    capacity = hub_settings().MAX_PROCESSES_PER_NODE
    plan: list[tuple[ProcessRef, str]] = []
    after = None
    while True:
        rows = store.process_page(None, None, None, None, RUNNING, after, PAGE)
        for row in rows:
            winner = None if row.guided else placement.choose_node(row.label, row.process_id, live, capacity)
            if winner is not None and winner.id != row.node_id:
                plan.append((_ref(row), winner.name))
                if limit is not None and len(plan) >= limit:
                    return plan
        if len(rows) < PAGE:
            return plan
        after = (rows[-1].label, rows[-1].process_id)


def rebalance(timeout: float | None = None) -> int:
    """Ask every live node for one rebalancing sweep (for ``REBALANCE = "passive"`` clusters): each moves the
    processes placement now puts elsewhere, at most REBALANCE_RATE moves per second in all. Returns how
    many nodes took the request; the moves go on in the background (``rebalance_plan()`` shrinks to nothing)."""
    rt = get_runtime()
    return rt.run_sync(rt.client.rebalance(timeout))


async def arebalance(timeout: float | None = None) -> int:
    rt = get_runtime()
    return await rt.run_async(rt.client.rebalance(timeout))


# ---------------------------------------------------------------- process groups


def members(group: str) -> ProcessList:
    """The running processes in ``group`` (they joined it with ``self.join(group)``)."""
    return ProcessList(None, None, None, RUNNING, group=group)


async def amembers(group: str, limit: int = 10 * PAGE) -> list[ProcessRef]:
    return await sync_to_async(members(group).page, thread_sensitive=False)(limit)


def publish(group: str, message: Any) -> int:
    """Cast ``message`` to every running member of ``group``; returns how many casts were sent."""
    rt = get_runtime()
    refs = list(members(group))
    return rt.run_sync(_publish(refs, message))


async def apublish(group: str, message: Any) -> int:
    rt = get_runtime()
    return await rt.run_async(_publish(await amembers(group), message))


async def _publish(refs: list[ProcessRef], message: Any) -> int:
    client = get_runtime().client
    outcomes = await asyncio.gather(*(client.send_to_running((r.label, r.process_id), message, None, cast=True)
                                      for r in refs), return_exceptions=True)
    return sum(1 for o in outcomes if not isinstance(o, BaseException))


def multi_call(group: str, message: Any, timeout: float | None = None) -> dict[str, Any]:
    """Call every running member of ``group`` at once: process id -> reply, or the ``ProcessHubError`` it got.

    A member that does not answer within ``timeout`` gets ``CallTimeout``; the whole call takes at most
    about ``timeout``. Keys are process ids; members of different classes sharing an id are keyed
    ``"label:id"``.
    """
    rt = get_runtime()
    refs = list(members(group))
    return rt.run_sync(_multi_call(refs, message, timeout))


async def amulti_call(group: str, message: Any, timeout: float | None = None) -> dict[str, Any]:
    rt = get_runtime()
    return await rt.run_async(_multi_call(await amembers(group), message, timeout))


async def _multi_call(refs: list[ProcessRef], message: Any, timeout: float | None) -> dict[str, Any]:
    client = get_runtime().client
    outcomes = await asyncio.gather(*(client.send_to_running((r.label, r.process_id), message, timeout)
                                      for r in refs), return_exceptions=True)
    ids = [r.process_id for r in refs]
    out: dict[str, Any] = {}
    for ref, outcome in zip(refs, outcomes, strict=True):
        key = ref.process_id if ids.count(ref.process_id) == 1 else f"{ref.label}:{ref.process_id}"
        if isinstance(outcome, BaseException) and not isinstance(outcome, ProcessHubError):
            raise outcome
        out[key] = outcome
    return out

