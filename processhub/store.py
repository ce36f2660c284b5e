"""Every statement of the registry protocol, as plain sync functions run in DB threads.

The claim statements carry the fencing logic of DESIGN I1/I2: an epoch is
incremented in the same statement that names the new owner, and a node only
claims while its own lease is valid in the database's clock.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Exists, F, Q, Sum
from django.db.models.functions import Now

from .models import Node, NodeStatus, Process, ProcessStatus

PT = Process._meta.db_table
NT = Node._meta.db_table


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    name: str
    channel: str


@dataclass(frozen=True, slots=True)
class Row:
    """One process row as the node needs it."""

    id: int
    label: str
    process_id: str
    arg: Any
    epoch: int
    restart: str
    handoff: Any = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """Where a process is, for clients."""

    label: str
    process_id: str
    status: str
    epoch: int
    node_id: str | None
    node_name: str | None
    channel: str | None
    owner_alive: bool


def _is_pg() -> bool:
    return connection.vendor == "postgresql"


def _now_sql() -> str:
    return "now()" if _is_pg() else "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(value: Any) -> Any:
    # Raw SQL returns JSON columns as text on SQLite and decoded on PostgreSQL.
    return json.loads(value) if isinstance(value, str) else value


# ---------------------------------------------------------------- nodes


def register_node(node_id: str, name: str, host: str, pid: int, channel: str, ttl: float) -> None:
    Node.objects.create(
        id=node_id,
        name=name,
        host=host,
        pid=pid,
        channel=channel,
        status=NodeStatus.UP,
        heartbeat_at=Now(),
        lease_expires_at=Now() + timedelta(seconds=ttl),
        started_at=Now(),
    )


def heartbeat(node_id: str, ttl: float) -> bool:
    """Renew the lease, only if it has not already run out: an expired lease never comes back."""
    return (
        Node.objects.filter(
            id=node_id, status__in=[NodeStatus.UP, NodeStatus.DRAINING], lease_expires_at__gt=Now()
        ).update(heartbeat_at=Now(), lease_expires_at=Now() + timedelta(seconds=ttl))
        == 1
    )


def set_node_status(node_id: str, status: str) -> None:
    updates: dict[str, Any] = {"status": status}
    if status == NodeStatus.DOWN:
        updates.update(stopped_at=Now(), lease_expires_at=Now())
    Node.objects.filter(id=node_id).update(**updates)


def live_nodes() -> list[NodeInfo]:
    """The live incarnations, newest only per node name.

    A node restarted faster than NODE_TTL leaves its old incarnation's lease
    running; placement hashes names, so the old one must not shadow the new one
    (starts would go to a dead channel until the old lease ran out).
    """
    rows = (Node.objects.filter(status=NodeStatus.UP, lease_expires_at__gt=Now())
            .order_by("name", "-started_at").values_list("id", "name", "channel"))
    seen: set[str] = set()
    out = []
    for r in rows:
        if r[1] not in seen:
            seen.add(r[1])
            out.append(NodeInfo(*r))
    return out


def live_nodes_and_next_expiry(node_id: str) -> tuple[list[NodeInfo], float | None]:
    """``live_nodes()``, and in how many seconds (database clock) the first lease of another node runs out.

    A node's reconcile wakes up right then instead of up to RECONCILE_INTERVAL
    later, so the processes of a node that died are taken over as soon as its
    lease allows (issue 4: failover). None on SQLite or when no other node is live.
    """
    if not _is_pg():
        return live_nodes(), None
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, name, channel, EXTRACT(EPOCH FROM lease_expires_at - now()) FROM {NT} "
                    f"WHERE status = 'up' AND lease_expires_at > now() ORDER BY name, started_at DESC")
        rows = cur.fetchall()
    seen: set[str] = set()
    out = []
    first = None
    for nid, name, channel, left in rows:
        if nid != node_id:
            first = left if first is None else min(first, left)  # shadowed incarnations too: they own rows
        if name not in seen:
            seen.add(name)
            out.append(NodeInfo(nid, name, channel))
    return out, None if first is None else float(first)


def same_name_live(node_id: str, name: str) -> list[str]:
    """Other live incarnations under this name, as "host/pid" strings."""
    rows = Node.objects.filter(name=name, status__in=[NodeStatus.UP, NodeStatus.DRAINING],
                               lease_expires_at__gt=Now()).exclude(id=node_id).values_list("host", "pid")
    return [f"{h}/{p}" for h, p in rows]


def dead_nodes_owning_processes() -> list[str]:
    """Incarnations whose lease ran out (database clock) that still own running rows."""
    dead = Node.objects.filter(Q(status=NodeStatus.DOWN) | Q(lease_expires_at__lte=Now()))
    return list(
        Process.objects.filter(status=ProcessStatus.RUNNING, node__in=dead).values_list("node_id", flat=True).distinct()
    )


def mark_expired_nodes_down() -> int:
    return Node.objects.filter(status__in=[NodeStatus.UP, NodeStatus.DRAINING], lease_expires_at__lte=Now()).update(
        status=NodeStatus.DOWN, stopped_at=Now()
    )


# ---------------------------------------------------------------- lookups


def lookup(label: str, process_id: str) -> Lookup | None:
    row = lookup_row(label, process_id)
    if row is None:
        return None
    status, _id, epoch, node_id, name, channel, alive = row
    return Lookup(label, process_id, status, epoch, node_id, name, channel, alive)


def lookup_many(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Lookup]:
    """``lookup`` of many (label, process id) keys in one statement; missing keys are absent."""
    if not _is_pg():
        return {k: found for k in keys if (found := lookup(*k)) is not None}
    sql = (
        f"SELECT p.label, p.process_id, p.status, p.epoch, p.node_id, n.name, n.channel, "
        f"(n.lease_expires_at > now() AND n.status <> 'down') "
        f"FROM unnest(%s::text[], %s::text[]) AS k(l, pid) "
        f"JOIN {PT} AS p ON p.label = k.l AND p.process_id = k.pid LEFT JOIN {NT} AS n ON n.id = p.node_id"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [[k[0] for k in keys], [k[1] for k in keys]])
        rows = cur.fetchall()
    return {(r[0], r[1]): Lookup(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[4] and r[7])) for r in rows}


def rows_for(node_id: str | None, limit: int) -> list[Row]:
    qs = Process.objects.filter(status=ProcessStatus.RUNNING, node_id=node_id) if node_id else Process.objects.filter(
        status=ProcessStatus.RUNNING, node__isnull=True
    )
    cols = ("id", "label", "process_id", "arg", "epoch", "restart", "handoff")
    return [Row(*r) for r in qs.order_by("id").values_list(*cols)[:limit]]


def own_digest(node_id: str) -> tuple[int, int]:
    """(count, sum of epochs) of the running rows naming this node: a cheap change detector."""
    agg = Process.objects.filter(node_id=node_id, status=ProcessStatus.RUNNING).aggregate(n=Count("id"), s=Sum("epoch"))
    return agg["n"] or 0, agg["s"] or 0


# ---------------------------------------------------------------- claims


def insert_new(node_id: str, items: list[tuple[str, str, Any, str]]) -> dict[tuple[str, str], int]:
    """Insert rows (label, process_id, arg, restart) owned by ``node_id`` at epoch 1.

    One statement for the whole batch; rows that already exist are left alone
    (the unique constraint is the arbiter of a start race). Nothing is inserted
    unless this node's lease is valid in the database's clock. Returns
    {key: row id} of the rows that were inserted.
    """
    if not items:
        return {}
    now = _now_sql()
    cols = (
        f"INSERT INTO {PT} (label, process_id, arg, restart, node_id, epoch, status, restarts, last_error, "
        f"started_at, updated_at, metadata) "
    )
    tail = (
        f"WHERE EXISTS (SELECT 1 FROM {NT} WHERE id = %s AND status = 'up' AND lease_expires_at > {now}) "
        f"ON CONFLICT (label, process_id) DO NOTHING RETURNING label, process_id, id"
    )
    if _is_pg():
        # Four array parameters whatever the batch size: psycopg caches the parsed statement, where a
        # VALUES list of 4 x 500 placeholders was re-parsed in Python on every batch (issue 4: activation).
        sql = (
            f"{cols}SELECT v.l, v.p, v.a::jsonb, v.r, %s, 1, 'running', 0, '', {now}, {now}, '{{}}' "
            f"FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS v(l, p, a, r) {tail}"
        )
        params: list[Any] = [node_id, [i[0] for i in items], [i[1] for i in items],
                             [_json(i[2]) for i in items], [i[3] for i in items], node_id]
    else:
        values = ",".join(["(%s, %s, %s, %s)"] * len(items))
        sql = (
            f"{cols}SELECT v.column1, v.column2, v.column3, v.column4, %s, 1, 'running', 0, '', {now}, {now}, "
            f"'{{}}' FROM (VALUES {values}) AS v {tail}"
        )
        params = [node_id]
        for label, pid, arg, restart in items:
            params += [label, pid, _json(arg), restart]
        params.append(node_id)
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return {(r[0], r[1]): r[2] for r in cur.fetchall()}


def lookup_row(label: str, process_id: str) -> tuple | None:
    """(status, id, epoch, node_id, node name, channel, owner alive) of one row, for a start decision."""
    # Raw SQL: the same query through the ORM cost ~2 ms of Python per lookup (issue 4: cold fetch, failover).
    sql = (
        f"SELECT p.status, p.id, p.epoch, p.node_id, n.name, n.channel, "
        f"(n.lease_expires_at > {_now_sql()} AND n.status <> 'down') "
        f"FROM {PT} AS p LEFT JOIN {NT} AS n ON n.id = p.node_id "
        f"WHERE p.label = %s AND p.process_id = %s"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [label, process_id])
        row = cur.fetchone()
    if row is None:
        return None
    return (*row[:6], bool(row[3] and row[6]))


def rows_owned(node_id: str, ids: list[int]) -> list[Row]:
    """Running rows among ``ids`` that name ``node_id`` (the check behind an activate hint)."""
    qs = Process.objects.filter(id__in=ids, node_id=node_id, status=ProcessStatus.RUNNING)
    return [Row(*r) for r in qs.values_list("id", "label", "process_id", "arg", "epoch", "restart", "handoff")]


def rows_by_id(ids: list[int]) -> list[Row]:
    qs = Process.objects.filter(id__in=ids, status=ProcessStatus.RUNNING)
    return [Row(*r) for r in qs.values_list("id", "label", "process_id", "arg", "epoch", "restart", "handoff")]


def claim(node_id: str, seen: list[tuple[int, int]], restart_from_stopped: bool = False,
          arg: Any = None) -> list[Row]:
    """Take rows (id, seen epoch) for ``node_id``: epoch+1 and owner in one statement.

    A row is taken only if its epoch is still the one we saw (nobody claimed it
    since) and our own lease is valid in the database's clock. Callers only pass
    rows whose owner was dead, absent, or which were stopped: a dead owner stays
    dead because an expired lease can never be renewed.
    """
    if not seen:
        return []
    now = _now_sql()
    # The status must still be the one the caller saw: a stop that lands between the
    # read and this claim (it does not bump the epoch) must not be undone.
    status_ok = "status <> 'running'" if restart_from_stopped else "status = 'running'"
    lease_ok = (f"{status_ok} AND EXISTS (SELECT 1 FROM {NT} WHERE id = %s AND status = 'up' "
                f"AND lease_expires_at > {now})")
    extra = ", restarts = 0, last_error = '', handoff = NULL" if restart_from_stopped else ""
    extra_params: list[Any] = []
    if restart_from_stopped:
        # A start of a stopped process runs it with the new argument.
        extra += ", arg = %s" + ("::jsonb" if _is_pg() else "")
        extra_params.append(_json(arg))
    cols = "id, label, process_id, arg, epoch, restart, handoff"
    if _is_pg():
        # Two array parameters whatever the batch size (a statement psycopg parses once; see insert_new).
        sql = (
            f"UPDATE {PT} AS p SET node_id = %s, epoch = p.epoch + 1, status = 'running', "
            f"started_at = {now}, updated_at = {now}{extra} "
            f"FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, ep) "
            f"WHERE p.id = v.id AND p.epoch = v.ep AND p.{lease_ok} "
            # A row locked by a frozen zombie's fenced() transaction must not stall the whole
            # batch: skip it now, take it on a later pass once the lock is gone.
            f"AND p.id IN (SELECT id FROM {PT} WHERE id = ANY(%s::bigint[]) FOR UPDATE SKIP LOCKED) "
            f"RETURNING p.id, p.label, p.process_id, p.arg, p.epoch, p.restart, p.handoff"
        )
        ids = [rid for rid, _ in seen]
        params: list[Any] = [node_id, *extra_params, ids, [ep for _, ep in seen], node_id, ids]
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return [Row(r[0], r[1], r[2], _load(r[3]), r[4], r[5], _load(r[6])) for r in cur.fetchall()]
    out = []
    with transaction.atomic():
        for rid, ep in seen:
            sql = (
                f"UPDATE {PT} SET node_id = %s, epoch = epoch + 1, status = 'running', "
                f"started_at = {now}, updated_at = {now}{extra} WHERE id = %s AND epoch = %s AND {lease_ok} "
                f"RETURNING {cols}"
            )
            with connection.cursor() as cur:
                cur.execute(sql, [node_id, *extra_params, rid, ep, node_id])
                r = cur.fetchone()
            if r:
                out.append(Row(r[0], r[1], r[2], _load(r[3]), r[4], r[5], _load(r[6])))
    return out


def bump_epoch(row_id: int, node_id: str, epoch: int, error: str, count_restart: bool) -> int | None:
    """Restart in place: epoch+1 on the same node, fenced on (node, epoch). New epoch or None."""
    updates: dict[str, Any] = {"epoch": F("epoch") + 1, "updated_at": Now(), "last_error": error[-10000:]}
    if count_restart:
        updates["restarts"] = F("restarts") + 1
    n = Process.objects.filter(id=row_id, node_id=node_id, epoch=epoch, status=ProcessStatus.RUNNING).update(**updates)
    return epoch + 1 if n == 1 else None


def finish(row_id: int, node_id: str | None, epoch: int, status: str, error: str = "") -> bool:
    """Mark a row stopped/failed, fenced on (node, epoch); the row stays for the admin and purge."""
    qs = Process.objects.filter(id=row_id, epoch=epoch, status=ProcessStatus.RUNNING)
    qs = qs.filter(node_id=node_id) if node_id else qs.filter(node__isnull=True)
    return qs.update(status=status, node=None, updated_at=Now(), last_error=error[-10000:], handoff=None) == 1


def move(row_id: int, from_node: str, epoch: int, to_node: str | None, handoff: Any = None) -> int | None:
    """Hand a row from its live owner to another node (or to nobody): epoch+1, fenced on (owner, epoch).

    The target must be up with a valid lease at this very statement: a node that began
    draining (or died) since the mover chose it would never activate the row.
    """
    qs = Process.objects.filter(id=row_id, node_id=from_node, epoch=epoch, status=ProcessStatus.RUNNING)
    if to_node is not None:
        qs = qs.filter(Exists(Node.objects.filter(id=to_node, status=NodeStatus.UP, lease_expires_at__gt=Now())))
    n = qs.update(
        node_id=to_node, epoch=F("epoch") + 1, updated_at=Now(), handoff=handoff
    )
    return epoch + 1 if n == 1 else None


def clear_handoff(row_id: int, epoch: int) -> None:
    Process.objects.filter(id=row_id, epoch=epoch).exclude(handoff=None).update(handoff=None)


def owns(label: str, process_id: str, node_id: str, epoch: int, *, lock: bool) -> bool:
    qs = Process.objects.filter(
        label=label, process_id=process_id, node_id=node_id, epoch=epoch, status=ProcessStatus.RUNNING
    )
    if lock:
        qs = qs.select_for_update()
    return bool(list(qs.values_list("id", flat=True)[:1]))


def stop_orphan(label: str, process_id: str, epoch: int) -> bool:
    """Stop a row whose owner is dead or absent (the client-side half of ``stop``)."""
    dead = Node.objects.filter(Q(status=NodeStatus.DOWN) | Q(lease_expires_at__lte=Now()))
    return (
        Process.objects.filter(label=label, process_id=process_id, epoch=epoch, status=ProcessStatus.RUNNING)
        .filter(Q(node__isnull=True) | Q(node__in=dead))
        .update(status=ProcessStatus.STOPPED, node=None, updated_at=Now(), last_error="stopped while its node was down")
        == 1
    )
