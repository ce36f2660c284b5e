"""Starts on a node: group commit, one activation per key, and the start case of an existing row.

Every start waiting here goes into one INSERT (``BATCH_SIZE`` rows a statement):
the unique constraint on (label, process id) arbitrates races between nodes.
A key is in at most one batch entry at a time (later starts of it join the
first), so a batch can never activate a key twice. A start that finds the row
already there decides by ``decisions.start_case``: join, redirect, claim or retry.
"""
from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError

from .. import classes, store, wire
from ..exceptions import InvalidArgument, InvalidMessage
from ..values import IDLE, RUNNING, ProcessRef, Row, StartSpec
from . import decisions
from .activation import Activation, Origin
from .host import NodeParts

logger = logging.getLogger(__name__)

Key = tuple[str, str]

# Rounds a start may take when the row keeps changing under it (a race with other nodes' claims).
START_ROUNDS = 5


class Result(enum.Enum):
    ACTIVATION = "activation"  # runs (or will run) here: wait for its init
    ELSEWHERE = "elsewhere"  # runs on another live node
    ERROR = "error"  # answer the caller with an error code
    RETRY = "retry"  # the row changed under us: decide again


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    activation: Activation | None = None
    created: bool = False
    ref: ProcessRef | None = None
    code: str = ""
    message: str = ""

    @classmethod
    def error(cls, code: str, message: str) -> Outcome:
        return cls(Result.ERROR, code=code, message=message)


RETRY = Outcome(Result.RETRY)


@dataclass(slots=True)
class _Pending:
    key: Key
    spec: StartSpec
    future: asyncio.Future


class StartBatcher:
    def __init__(self, node: NodeParts) -> None:
        self.node = node
        self.claiming: dict[Key, asyncio.Future] = {}  # keys with a start in flight here
        self._queue: list[_Pending] = []
        self._queued = asyncio.Event()

    # ------------------------------------------------------------ one start request

    def spec(self, key: Key, env: dict) -> StartSpec:
        """The start a START envelope (or one item of START_MANY) asks for, checked as the client checks it (I8)."""
        cls = classes.get(key[0])
        arg = env.get("a")
        try:
            # An unstorable id or argument would fail the whole group-committed INSERT of every start
            # batched with it.
            wire.check_process_id(key[1], self.node.hs.MAX_ID_LENGTH)
            wire.check_storable(arg, "start argument")
            tags = None if env.get("tg") is None else wire.check_tags(env["tg"])
            metadata = None if env.get("md") is None else wire.check_metadata(env["md"])
        except InvalidArgument as exc:
            raise InvalidMessage(str(exc)) from None
        token = env.get("tk")
        if token is not None and (not isinstance(token, str) or len(token) > 32):
            raise InvalidMessage("'tk' must be a short string")
        return StartSpec(arg, str(cls.restart), tags, metadata, env.get("g") is True, token, env.get("ro") is True,
                         env.get("wi") is True)

    async def start(self, key: Key, spec: StartSpec) -> dict:
        """Start (or join) ``key`` here; the reply envelope for the caller."""
        node = self.node
        cls = classes.get(key[0])
        arg = spec.arg
        if not spec.reactivate_only:  # a reactivation uses the stored argument
            try:
                pid = cls.process_id(arg)
            except Exception as exc:
                raise InvalidMessage(f"{key[0]}.process_id() raised {exc!r}") from None
            if pid != key[1]:
                raise InvalidMessage(f"process id {key[1]!r} does not match process_id(arg) = {pid!r}")
        for _ in range(START_ROUNDS):
            # Checked every round: a drain may begin while this start waits for its batch.
            refusal = node.handoff.refuses(key[0])
            if refusal:
                return {"ok": False, "err": wire.E_FENCED, "msg": refusal}
            act = node.activations.get(key)
            if act is not None and not act.busy:
                return await self._when_ready(act, created=False)
            capacity = node.hs.MAX_PROCESSES_PER_NODE
            if capacity is not None and len(node.activations) + len(self.claiming) >= capacity:
                return {"ok": False, "err": wire.E_AT_CAPACITY,
                        "msg": f"node {node.name} runs {capacity} processes (MAX_PROCESSES_PER_NODE)"}
            found = self.claiming.get(key)
            first = found is None
            if found is None:
                fut = self.claiming[key] = asyncio.get_running_loop().create_future()
                self._queue.append(_Pending(key, spec, fut))
                self._queued.set()
            else:
                fut = found
            outcome: Outcome = await asyncio.shield(fut)
            if outcome.result is Result.ACTIVATION and outcome.activation is not None:
                return await self._when_ready(outcome.activation, created=first and outcome.created)
            if outcome.result is Result.ELSEWHERE and outcome.ref is not None:
                return {"ok": True, "ref": outcome.ref.as_wire(), "created": False}
            if outcome.result is Result.ERROR:
                return {"ok": False, "err": outcome.code, "msg": outcome.message}
        return {"ok": False, "err": wire.E_UNAVAILABLE, "msg": "start kept racing; try again"}

    async def _when_ready(self, act: Activation, created: bool) -> dict:
        try:
            await asyncio.shield(act.ready)
        except asyncio.CancelledError:
            return {"ok": False, "err": wire.E_NOT_HERE, "msg": "activation was stopped"}
        except Exception as exc:
            return {"ok": False, "err": wire.E_CRASHED, "msg": f"init failed: {exc}",
                    "exc_type": getattr(exc, "exc_type", type(exc).__name__), "tb": getattr(exc, "tb", "")}
        return {"ok": True, "ref": act.ref(created).as_wire(), "created": created}

    def fail_all(self, message: str) -> None:
        """Answer every start in flight (the node fenced or is leaving): callers retry elsewhere."""
        for fut in self.claiming.values():
            if not fut.done():
                fut.set_result(Outcome.error(wire.E_FENCED, message))
        self.claiming.clear()
        # Starts still queued belong to the old incarnation too: answer them now, or a retry
        # queued after the rejoin would put the same key twice in one batch.
        queued, self._queue = self._queue, []
        for p in queued:
            if not p.future.done():
                p.future.set_result(Outcome.error(wire.E_FENCED, message))

    # ------------------------------------------------------------ the batch loop

    async def loop(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                size = self.node.hs.BATCH_SIZE
                batch, self._queue = self._queue[:size], self._queue[size:]
                try:
                    await self.step(batch)
                except Exception as exc:
                    logger.exception("processhub: start batch failed on %s", self.node.name)
                    for p in batch:
                        self._settle(p, Outcome.error(wire.E_UNAVAILABLE, f"start failed: {exc}"))
                # This frame would keep the last batch, and through its outcomes its activations, after they end.
                batch = []

    async def step(self, batch: list[_Pending]) -> None:
        """One group commit: insert what is new, then decide each existing row on its own."""
        node = self.node
        batch = self._unique(batch)
        if not batch:
            return
        if not node.lease_valid():
            for p in batch:
                self._settle(p, Outcome.error(wire.E_FENCED, "node has no valid lease"))
            return
        incarnation = node.id
        batch = await self._wake_idle(batch, incarnation)
        if not batch:
            return
        items = [(p.key[0], p.key[1], p.spec) for p in batch if not p.spec.reactivate_only]
        inserted = await node.write(store.insert_new, incarnation, items, keys=[p.key for p in batch]) or {}
        existing: list[_Pending] = []
        for p in batch:
            row_id = inserted.get(p.key)
            if not node.current(incarnation):
                self._settle(p, Outcome.error(wire.E_FENCED, "node lost its lease while starting"))
            elif row_id is not None:
                s = p.spec
                row = Row(row_id, p.key[0], p.key[1], s.arg, 1, s.restart, None, s.tags or (), s.metadata or {},
                          (), s.guided)
                self._settle(p, Outcome(Result.ACTIVATION, node.activate(row, Origin.START), created=True))
            else:
                existing.append(p)
        if existing:
            found = await self._lookup([p.key for p in existing])
            for p in existing:
                self._settle(p, await self._existing(p.key, p.spec, found))

    async def _wake_idle(self, batch: list[_Pending], incarnation: str) -> list[_Pending]:
        """Wake the rows callers saw idle in one statement; the rest of the batch (and what was not idle after
        all) goes on the usual way."""
        node = self.node
        hinted = [p for p in batch if p.spec.was_idle]
        if not hinted:
            return batch
        keys = [p.key for p in hinted]
        woke = {row.key: row for row in await node.write(store.wake_idle, incarnation, keys, keys=keys) or ()}
        for p in hinted:
            row = woke.get(p.key)
            if row is None:
                continue
            if not node.current(incarnation):
                self._settle(p, Outcome.error(wire.E_FENCED, "node lost its lease while starting"))
            else:
                # As a start that finds the row idle: a takeover (a failed init follows the restart policy).
                self._settle(p, Outcome(Result.ACTIVATION, node.activate(row, Origin.TAKEOVER)))
        return [p for p in batch if not p.future.done()]

    def _unique(self, batch: list[_Pending]) -> list[_Pending]:
        # Answered entries (a fence answered them) are dropped; one entry per key, so a key can
        # never be activated twice from one batch.
        unique: dict[Key, _Pending] = {}
        for p in batch:
            if not p.future.done() and p.key not in unique:
                unique[p.key] = p
        for p in batch:
            if not p.future.done() and unique.get(p.key) is not p:
                p.future.set_result(RETRY)
        return list(unique.values())

    def _settle(self, p: _Pending, outcome: Outcome) -> None:
        if self.claiming.get(p.key) is p.future:
            del self.claiming[p.key]
        if not p.future.done():
            p.future.set_result(outcome)

    async def _lookup(self, keys: list[Key]) -> dict[Key, Any] | DatabaseError:
        """The rows of the starts whose INSERT found one, in one statement."""
        try:
            return await self.node.rt.db(store.lookup_many, keys)
        except DatabaseError as exc:
            return exc

    async def _existing(self, key: Key, spec: StartSpec, looked_up: dict[Key, Any] | DatabaseError) -> Outcome:
        """The row exists: join it, redirect, take it over, or restart it (``decisions.start_case``)."""
        node = self.node
        if isinstance(looked_up, DatabaseError):
            return Outcome.error(wire.E_UNAVAILABLE, f"database: {type(looked_up).__name__}")
        found = looked_up.get(key)
        if spec.reactivate_only and (found is None or found.status not in (RUNNING, IDLE)):
            return Outcome.error(wire.E_NOT_RUNNING, f"{key[0]} {key[1]!r} is not running")
        if found is None:
            return RETRY  # vanished between the insert and the read: decide again
        incarnation = node.id
        state = decisions.RowState(found.status, found.node_id, found.owner_alive)
        act = node.activations.get(key)
        running_here = act is not None and act.epoch == found.epoch and not act.busy
        case = decisions.start_case(state, incarnation, running_here)
        if case is decisions.StartCase.HERE:
            return Outcome(Result.ACTIVATION, act)
        if case is decisions.StartCase.ELSEWHERE:
            return Outcome(Result.ELSEWHERE, ref=ProcessRef(key[0], key[1], found.node_name or "", found.node_id or "",
                                                            found.epoch, False, found.channel or ""))
        if case is decisions.StartCase.ACTIVATE:
            rows = await node.rt.db(store.rows_by_id, [found.row_id])
            if not rows or rows[0].epoch != found.epoch:
                return RETRY
            if not node.current(incarnation):
                return Outcome.error(wire.E_FENCED, "node lost its lease while starting")
            return Outcome(Result.ACTIVATION, node.activate(rows[0], Origin.ASSIGNED))
        # TAKE_OVER (owner dead or absent), REACTIVATE (passivated) or RESTART (stopped, failed): claim it.
        restarting = case is decisions.StartCase.RESTART
        if restarting:
            got = await node.write(store.claim, incarnation, [(found.row_id, found.epoch)], spec, keys=[key])
        else:
            status = IDLE if case is decisions.StartCase.REACTIVATE else found.status
            got = await node.write(store.claim, incarnation, [(found.row_id, found.epoch)], None, status, keys=[key])
        if not got:
            return RETRY
        if not node.current(incarnation):
            return Outcome.error(wire.E_FENCED, "node lost its lease while starting")
        origin = Origin.START if restarting else Origin.TAKEOVER
        return Outcome(Result.ACTIVATION, node.activate(got[0], origin), created=case is not
                       decisions.StartCase.REACTIVATE)
