"""Every statement of the registry protocol, as plain sync functions run in DB threads.

The claim statements carry the fencing logic of DESIGN I1/I2: an epoch is
incremented in the same statement that names the new owner, and a node only
claims while its own lease is valid in the database's clock. ``fenced`` is the
transaction behind ``HordeProcess.fenced()`` (I4).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, Least, Now

from .exceptions import Fenced
from .models import Node, NodeStatus, Process, ProcessStatus
from .transport.envelope import WIRE_VERSION
from .values import Lookup, NodeInfo, ProcessRef, Row, StartSpec

PT = Process._meta.db_table
NT = Node._meta.db_table

# Node statuses that hold a lease, and those that may own new or claimed rows (placement prefers "up").
LEASED = (NodeStatus.UP, NodeStatus.DRAINING, NodeStatus.LEAVING)
TAKES = ("up", "draining")
_TAKES_SQL = "status IN ('up', 'draining')"
# application_name of a session inside fenced(): lets a node that takes over end a frozen owner's session.
FENCED_APP = "processhub-fenced:"


def _is_pg() -> bool:
    return connection.vendor == "postgresql"


def _now_sql() -> str:
    return "now()" if _is_pg() else "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(value: Any) -> Any:
    # Raw SQL returns JSON columns as text on SQLite and decoded on PostgreSQL.
    return json.loads(value) if isinstance(value, str) else value


def _row(r: tuple) -> Row:
    """A Row from ROW_COLUMNS values of a raw SQL statement (JSON columns arrive as text)."""
    return Row(r[0], r[1], r[2], _load(r[3]), r[4], r[5], _load(r[6]), tuple(_load(r[7]) or ()), _load(r[8]) or {},
               tuple(_load(r[9]) or ()), bool(r[10]))


def _orm_row(r: tuple) -> Row:
    """A Row from ROW_COLUMNS values of an ORM query (JSON columns arrive decoded)."""
    return Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7] or ()), r[8] or {}, tuple(r[9] or ()), bool(r[10]))


ROW_COLUMNS = ("id", "label", "process_id", "arg", "epoch", "restart", "handoff", "tags", "metadata", "groups",
               "guided")
_RETURNING = ", ".join(f"p.{c}" for c in ROW_COLUMNS)


# ---------------------------------------------------------------- nodes


def register_node(node_id: str, name: str, host: str, pid: int, channel: str, ttl: float,
                  labels: list[str]) -> None:
    Node.objects.create(
        id=node_id,
        name=name,
        host=host,
        pid=pid,
        channel=channel,
        labels=sorted(labels),
        wire=WIRE_VERSION,
        status=NodeStatus.UP,
        heartbeat_at=Now(),
        lease_expires_at=Now() + timedelta(seconds=ttl),
        started_at=Now(),
    )


def heartbeat(node_id: str, ttl: float, load: int = 0) -> bool:
    """Renew the lease, only if it has not already run out: an expired lease never comes back.

    ``load`` (activations running) rides along, for placement under MAX_PROCESSES_PER_NODE.
    """
    return (
        Node.objects.filter(id=node_id, status__in=LEASED, lease_expires_at__gt=Now())
        .update(heartbeat_at=Now(), lease_expires_at=Now() + timedelta(seconds=ttl), load=load)
        == 1
    )


def set_node_status(node_id: str, status: str) -> None:
    updates: dict[str, Any] = {"status": status}
    if status == NodeStatus.DOWN:
        # Never later than it was: a node that marks itself down after waking from a pause must not make
        # its lease look longer than the one the others took over after.
        updates.update(stopped_at=Now(), lease_expires_at=Least(F("lease_expires_at"), Now()))
        Node.objects.filter(id=node_id).update(**updates)
    else:
        # Only a live incarnation changes between up, draining and leaving.
        Node.objects.filter(id=node_id, status__in=LEASED).update(**updates)


def _newest_per_name(rows: list[tuple]) -> list[NodeInfo]:
    """The live incarnations, newest only per node name (rows ordered by name, newest first).

    A node restarted faster than NODE_TTL leaves its old incarnation's lease
    running; placement hashes names, so the old one must not shadow the new one.
    """
    seen: set[str] = set()
    out = []
    for nid, name, channel, labels, status, load in rows:
        if name not in seen:
            seen.add(name)
            out.append(NodeInfo(nid, name, channel, frozenset(_load(labels) or ()), status, load))
    return out


def live_nodes() -> list[NodeInfo]:
    """The incarnations that may own rows: up or draining, with a valid lease (database clock), that speak
    this release's wire version (a node of another version cannot be talked to)."""
    rows = (Node.objects.filter(status__in=TAKES, lease_expires_at__gt=Now(), wire=WIRE_VERSION)
            .order_by("name", "-started_at").values_list("id", "name", "channel", "labels", "status", "load"))
    return _newest_per_name(list(rows))


def live_nodes_and_next_expiry(node_id: str) -> tuple[list[NodeInfo], float | None]:
    """``live_nodes()``, and in how many seconds (database clock) the first lease of another node runs out.

    A node's reconcile wakes up right then instead of up to RECONCILE_INTERVAL
    later, so the processes of a node that died are taken over as soon as its
    lease allows. None on SQLite or when no other node is live.
    """
    if not _is_pg():
        return live_nodes(), None
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, name, channel, labels, status, load, EXTRACT(EPOCH FROM lease_expires_at - now()), "
                    f"wire FROM {NT} WHERE status IN ('up', 'draining', 'leaving') AND lease_expires_at > now() "
                    f"ORDER BY name, started_at DESC")
        rows = cur.fetchall()
    first = None
    for r in rows:
        if r[0] != node_id:
            first = r[6] if first is None else min(first, r[6])  # shadowed incarnations too: they own rows
    live = [r[:6] for r in rows if r[4] in TAKES and r[7] == WIRE_VERSION]
    return _newest_per_name(live), None if first is None else float(first)


def same_name_live(node_id: str, name: str) -> list[str]:
    """Other live incarnations under this name, as "host/pid" strings."""
    rows = Node.objects.filter(name=name, status__in=LEASED, lease_expires_at__gt=Now()).exclude(
        id=node_id).values_list("host", "pid")
    return [f"{h}/{p}" for h, p in rows]


def _dead_nodes():
    return Node.objects.filter(Q(status=NodeStatus.DOWN) | Q(lease_expires_at__lte=Now()))


def dead_owners() -> list[str | None]:
    """Incarnations whose lease ended (database clock) that still own running rows; None for unowned rows."""
    owners: list[str | None] = list(
        Process.objects.filter(status=ProcessStatus.RUNNING, node__in=_dead_nodes())
        .values_list("node_id", flat=True).distinct()
    )
    if Process.objects.filter(status=ProcessStatus.RUNNING, node__isnull=True).exists():
        owners.append(None)
    return owners


def orphans_page(owner: str | None, after_id: int, limit: int) -> list[Row]:
    """Running rows of the dead incarnation ``owner`` (None: of no node) with id > ``after_id``, by id.

    Keyset pagination: every pass reads every page, so rows that cannot be claimed
    now (locked, or of a class nobody runs) never starve the rows behind them.
    """
    if _is_pg():
        # The failover path: 10,000 rows of a dead node are read and claimed within the takeover budget.
        if owner is None:
            return _running_rows("node_id IS NULL AND id > %s ORDER BY id LIMIT %s", [after_id, limit])
        return _running_rows(
            f"node_id = %s AND id > %s AND EXISTS (SELECT 1 FROM {NT} AS n WHERE n.id = %s AND "
            f"(n.status = 'down' OR n.lease_expires_at <= now())) ORDER BY id LIMIT %s",
            [owner, after_id, owner, limit])
    qs = Process.objects.filter(status=ProcessStatus.RUNNING, id__gt=after_id)
    if owner is None:
        qs = qs.filter(node__isnull=True)
    else:
        qs = qs.filter(node_id=owner).filter(node__in=_dead_nodes())
    return [_orm_row(r) for r in qs.order_by("id").values_list(*ROW_COLUMNS)[:limit]]


def end_fenced_sessions(owner: str) -> int:
    """End the database sessions of a dead incarnation that are inside ``fenced()`` (PostgreSQL).

    A node frozen inside ``fenced()`` holds its process row's lock, which takeover
    claims skip; its lease is over, so its transaction must not commit anyway.
    Ending its session releases the lock now rather than when some timeout of the
    project's database settings (if any) fires. Needs the same database role for
    every node (or ``pg_signal_backend``); without it the session ends at the
    ``idle_in_transaction_session_timeout`` that ``fenced()`` sets itself.
    """
    if not _is_pg():
        return 0
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 1000)) FROM pg_stat_activity "
                        "WHERE application_name = %s AND pid <> pg_backend_pid()", [FENCED_APP + owner])
            return int(cur.fetchone()[0])
    except DatabaseError:
        return 0  # not allowed to signal that backend: the idle timeout ends it


def mark_expired_nodes_down() -> int:
    return Node.objects.filter(status__in=LEASED, lease_expires_at__lte=Now()).update(
        status=NodeStatus.DOWN, stopped_at=Now()
    )


# ---------------------------------------------------------------- lookups


_LOOKUP_COLUMNS = ("p.label, p.process_id, p.status, p.epoch, p.node_id, n.name, n.channel, "
                   "(n.lease_expires_at > {now} AND n.status <> 'down'), p.id, n.wire, p.tags, p.metadata")


def _lookup(r: tuple) -> Lookup:
    return Lookup(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[4] and r[7]), r[8], r[9],
                  tuple(_load(r[10]) or ()), _load(r[11]) or {})


def lookup(label: str, process_id: str) -> Lookup | None:
    """Where one process is (status, owner, epoch, whether the owner's lease is valid)."""
    # Raw SQL: the same query through the ORM cost ~2 ms of Python per lookup (cold fetch, failover).
    sql = (f"SELECT {_LOOKUP_COLUMNS.format(now=_now_sql())} FROM {PT} AS p LEFT JOIN {NT} AS n ON n.id = p.node_id "
           f"WHERE p.label = %s AND p.process_id = %s")
    with connection.cursor() as cur:
        cur.execute(sql, [label, process_id])
        row = cur.fetchone()
    return None if row is None else _lookup(row)


def lookup_many(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Lookup]:
    """``lookup`` of many (label, process id) keys in one statement; missing keys are absent."""
    if not _is_pg():
        return {k: found for k in keys if (found := lookup(*k)) is not None}
    sql = (f"SELECT {_LOOKUP_COLUMNS.format(now='now()')} FROM unnest(%s::text[], %s::text[]) AS k(l, pid) "
           f"JOIN {PT} AS p ON p.label = k.l AND p.process_id = k.pid LEFT JOIN {NT} AS n ON n.id = p.node_id")
    with connection.cursor() as cur:
        cur.execute(sql, [[k[0] for k in keys], [k[1] for k in keys]])
        rows = cur.fetchall()
    return {(r[0], r[1]): _lookup(r) for r in rows}


def _running_rows(where: str, params: list[Any]) -> list[Row]:
    """Running rows matching ``where`` (on PostgreSQL), as Rows.

    A full read of a node's 100,000 rows ran for seconds in a DB thread holding
    the GIL while the node's loop waited: Django's per-field converters parsed
    five JSON columns per row. Here the JSON columns arrive as text, and tags,
    metadata and groups at their defaults as NULL, which costs nothing to read.
    """
    sql = (
        f"SELECT id, label, process_id, arg::text, epoch, restart, handoff::text, NULLIF(tags, '[]'::jsonb)::text, "
        f"NULLIF(metadata, '{{}}'::jsonb)::text, NULLIF(groups, '[]'::jsonb)::text, guided FROM {PT} "
        f"WHERE status = 'running' AND {where}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return [_row(r) for r in cur.fetchall()]


def rows_for(node_id: str) -> list[Row]:
    """Every running row that names ``node_id``."""
    if _is_pg():
        return _running_rows("node_id = %s", [node_id])
    qs = Process.objects.filter(status=ProcessStatus.RUNNING, node_id=node_id)
    return [_orm_row(r) for r in qs.values_list(*ROW_COLUMNS)]


def own_digest(node_id: str) -> tuple[int, int]:
    """(count, sum of epochs) of the running rows naming this node: a cheap change detector."""
    agg = Process.objects.filter(node_id=node_id, status=ProcessStatus.RUNNING).aggregate(n=Count("id"), s=Sum("epoch"))
    return agg["n"] or 0, agg["s"] or 0


def rows_owned(node_id: str, ids: list[int]) -> list[Row]:
    """Running rows among ``ids`` that name ``node_id`` (the check behind an activate hint)."""
    if _is_pg():
        return _running_rows("node_id = %s AND id = ANY(%s)", [node_id, list(ids)])
    qs = Process.objects.filter(id__in=ids, node_id=node_id, status=ProcessStatus.RUNNING)
    return [_orm_row(r) for r in qs.values_list(*ROW_COLUMNS)]


def rows_by_id(ids: list[int]) -> list[Row]:
    qs = Process.objects.filter(id__in=ids, status=ProcessStatus.RUNNING)
    return [_orm_row(r) for r in qs.values_list(*ROW_COLUMNS)]


# ---------------------------------------------------------------- queries (processhub.hub)


@dataclass(frozen=True, slots=True)
class ListedRow:
    """One row of a registry query, as hub.process_list returns it (node fields empty when it runs nowhere)."""

    label: str
    process_id: str
    status: str
    epoch: int
    node_id: str | None
    node_name: str | None
    channel: str | None
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    guided: bool = False


def _tags(value: Any) -> tuple[str, ...]:
    """A JSON list of strings (a tags column of a raw SQL row, as text) as a tuple.

    PostgreSQL prints a jsonb array of strings as ``["a", "b"]``. Without a backslash no string in it holds a
    quote, so when the quotes are exactly two per piece between the ``", "`` separators, the pieces are the
    strings (about twice as fast as ``json.loads``). Anything else (SQLite's text, escapes) is decoded.
    """
    if isinstance(value, str) and value.startswith('["') and value.endswith('"]') and "\\" not in value:
        parts = value[2:-2].split('", "')
        if value.count('"') == 2 * len(parts):
            return tuple(parts)
    return tuple(_load(value) or ())


def _page_rows(label: str | None, tag: str | None, group: str | None, node: str | None, status: str | None,
               after: tuple[str, str] | None, limit: int) -> list[tuple]:
    """The rows of one page (see ``process_page``): label, process_id, status, epoch, node_id, node name, channel,
    tags, metadata (JSON as text), guided."""
    now = _now_sql()
    where, params = [], []
    if label is not None:
        where.append("p.label = %s")
        params.append(label)
    for column, value in (("tags", tag), ("groups", group)):
        if value is None:
            continue
        if _is_pg():
            where.append(f"p.{column} @> %s::jsonb")  # the GIN index (jsonb_path_ops) answers this
            params.append(_json([value]))
        else:
            where.append(f"EXISTS (SELECT 1 FROM json_each(p.{column}) WHERE json_each.value = %s)")
            params.append(value)
    if node is not None:
        where.append("(n.name = %s OR p.node_id = %s)")
        params += [node, node]
    if status == ProcessStatus.RUNNING:
        where.append(f"p.status = 'running' AND n.lease_expires_at > {now} AND n.status <> 'down'")
    elif status is not None:
        where.append("p.status = %s")
        params.append(status)
    if after is not None:
        where.append("(p.label > %s OR (p.label = %s AND p.process_id > %s))")
        params += [after[0], after[0], after[1]]
    sql = (f"SELECT p.label, p.process_id, p.status, p.epoch, p.node_id, n.name, n.channel, p.tags, p.metadata, "
           f"p.guided "
           f"FROM {PT} AS p LEFT JOIN {NT} AS n ON n.id = p.node_id "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY p.label, p.process_id LIMIT %s")
    with connection.cursor() as cur:
        cur.execute(sql, [*params, limit])
        return cur.fetchall()


def process_page(label: str | None, tag: str | None, group: str | None, node: str | None, status: str | None,
                 after: tuple[str, str] | None, limit: int) -> list[ListedRow]:
    """One page of processes, in (label, process id) order after ``after`` (keyset: each page is one indexed
    read however many rows there are). ``status`` "running" counts only rows whose owner holds a live lease."""
    return [ListedRow(lb, pid, st, ep, nid, name, ch, _tags(tg), {} if md == "{}" else _load(md) or {}, bool(g))
            for lb, pid, st, ep, nid, name, ch, tg, md, g in _page_rows(label, tag, group, node, status, after, limit)]


def process_refs_page(label: str | None, tag: str | None, group: str | None, node: str | None, status: str | None,
                      after: tuple[str, str] | None, limit: int) -> list[ProcessRef]:
    """``process_page`` as the ProcessRefs ``hub.process_list`` returns (node fields empty unless running).

    Built straight from the cursor's tuples: at 1,000 rows a page, the intermediate ListedRow and a JSON
    decode of every (mostly empty) metadata object were a third of a tag query's time.
    """
    return [ProcessRef(lb, pid, (name or "") if st == "running" else "", (nid or "") if st == "running" else "", ep,
                       False, ch or "", _tags(tg), {} if md == "{}" else _load(md) or {}, st)
            for lb, pid, st, ep, nid, name, ch, tg, md, _ in _page_rows(label, tag, group, node, status, after, limit)]


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node incarnation that is not down, as ``hub.nodes()`` reports it."""

    name: str
    id: str
    status: str
    lease_valid: bool
    processes: int
    host: str
    pid: int | None
    labels: tuple[str, ...]


def node_states() -> list[NodeState]:
    """Every incarnation not marked down, with its lease (database clock) and its running rows (one statement)."""
    running = Process.objects.filter(node=OuterRef("pk"), status=ProcessStatus.RUNNING).order_by().values(
        "node").annotate(n=Count("id")).values("n")
    rows = (Node.objects.exclude(status=NodeStatus.DOWN)
            .annotate(valid=ExpressionWrapper(Q(lease_expires_at__gt=Now()), output_field=BooleanField()),
                      running=Coalesce(Subquery(running), 0))
            .order_by("name", "-started_at")
            .values_list("name", "id", "status", "valid", "running", "host", "pid", "labels"))
    return [NodeState(n, i, st, bool(v), int(c), h, p, tuple(_load(lb) or ())) for n, i, st, v, c, h, p, lb in rows]


# ---------------------------------------------------------------- claims


def _lease_ok(now: str) -> str:
    return f"EXISTS (SELECT 1 FROM {NT} WHERE id = %s AND {_TAKES_SQL} AND lease_expires_at > {now})"


def insert_new(node_id: str, items: list[tuple[str, str, StartSpec]]) -> dict[tuple[str, str], int]:
    """Insert rows (label, process_id, spec) owned by ``node_id`` at epoch 1.

    One statement for the whole batch; rows that already exist are left alone
    (the unique constraint is the arbiter of a start race). Nothing is inserted
    unless this node's lease is valid in the database's clock. Returns
    {key: row id} of the rows that were inserted.
    """
    if not items:
        return {}
    now = _now_sql()
    cols = (
        f"INSERT INTO {PT} (label, process_id, arg, restart, tags, metadata, guided, start_token, node_id, epoch, "
        f"status, restarts, last_error, started_at, updated_at, groups) "
    )
    tail = f"WHERE {_lease_ok(now)} ON CONFLICT (label, process_id) DO NOTHING RETURNING label, process_id, id"
    columns = ([i[0] for i in items], [i[1] for i in items], [_json(i[2].arg) for i in items],
               [i[2].restart for i in items], [_json(list(i[2].tags or ())) for i in items],
               [_json(i[2].metadata or {}) for i in items], [i[2].guided for i in items], [i[2].token for i in items])
    if _is_pg():
        # Array parameters whatever the batch size: psycopg caches the parsed statement, where a VALUES
        # list of placeholders per row was re-parsed in Python on every batch.
        sql = (
            f"{cols}SELECT v.l, v.p, v.a::jsonb, v.r, v.tg::jsonb, v.md::jsonb, v.g, v.tk, %s, 1, 'running', 0, '', "
            f"{now}, {now}, '[]' FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
            f"%s::boolean[], %s::text[]) AS v(l, p, a, r, tg, md, g, tk) {tail}"
        )
        params: list[Any] = [node_id, *columns, node_id]
    else:
        values = ",".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(items))
        sql = (
            f"{cols}SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, "
            f"%s, 1, 'running', 0, '', {now}, {now}, '[]' FROM (VALUES {values}) AS v {tail}"
        )
        params = [node_id]
        for row in zip(*columns, strict=True):
            params += list(row)
        params.append(node_id)
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return {(r[0], r[1]): r[2] for r in cur.fetchall()}


def _taken_by(now: str, alias: str = "") -> str:
    """The SET list of a row taken by a node (its id the one parameter): running there at the next epoch."""
    return (f"node_id = %s, epoch = {alias}epoch + 1, status = 'running', started_at = {now}, "
            f"updated_at = {now}")


def claim(node_id: str, seen: list[tuple[int, int]], restart: StartSpec | None = None,
          status: str = "running") -> list[Row]:
    """Take rows (id, seen epoch) for ``node_id``: epoch+1 and owner in one statement.

    A row is taken only if its epoch is still the one we saw (nobody claimed it
    since), its status is still ``status``, and our own lease is valid in the
    database's clock. Callers only pass rows whose owner was dead or absent, or
    that were not running (``restart`` then says how a caller's start restarts
    them: a new argument, counters reset, tags and metadata when given). A dead
    owner stays dead because an expired lease can never be renewed.
    """
    if not seen:
        return []
    now = _now_sql()
    cast = "::jsonb" if _is_pg() else ""
    # The status must still be the one the caller saw: a stop that lands between the
    # read and this claim (it does not bump the epoch) must not be undone.
    status_ok = "status = %s" if restart is None else "status <> 'running'"
    status_params: list[Any] = [status] if restart is None else []
    extra = ""
    extra_params: list[Any] = []
    if restart is not None:
        extra = f", restarts = 0, last_error = '', handoff = NULL, arg = %s{cast}, guided = %s, start_token = %s"
        extra_params = [_json(restart.arg), restart.guided, restart.token]
        if restart.tags is not None:
            extra += f", tags = %s{cast}"
            extra_params.append(_json(list(restart.tags)))
        if restart.metadata is not None:
            extra += f", metadata = %s{cast}"
            extra_params.append(_json(restart.metadata))
    if _is_pg():
        # Array parameters whatever the batch size (a statement psycopg parses once; see insert_new). The rows
        # are locked by primary key first (an index lookup each, whatever the table's statistics say), and a
        # row locked by a frozen zombie's fenced() transaction is skipped rather than waited for: a later pass
        # takes it once that session has been ended.
        sql = (
            f"WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, ep)), "
            f"locked AS (SELECT p.id FROM v JOIN {PT} AS p ON p.id = v.id AND p.epoch = v.ep "
            f"WHERE p.{status_ok} FOR UPDATE OF p SKIP LOCKED) "
            f"UPDATE {PT} AS p SET {_taken_by(now, 'p.')}{extra} FROM locked "
            f"WHERE p.id = locked.id AND {_lease_ok(now)} RETURNING {_RETURNING}"
        )
        params: list[Any] = [[rid for rid, _ in seen], [ep for _, ep in seen], *status_params, node_id,
                             *extra_params, node_id]
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return [_row(r) for r in cur.fetchall()]
    out = []
    with transaction.atomic():
        for rid, ep in seen:
            sql = (
                f"UPDATE {PT} SET {_taken_by(now)}{extra} WHERE id = %s AND epoch = %s AND {status_ok} "
                f"AND {_lease_ok(now)} RETURNING {', '.join(ROW_COLUMNS)}"
            )
            with connection.cursor() as cur:
                cur.execute(sql, [node_id, *extra_params, rid, ep, *status_params, node_id])
                r = cur.fetchone()
            if r:
                out.append(_row(r))
    return out


def wake_idle(node_id: str, keys: list[tuple[str, str]]) -> list[Row]:
    """Take the idle (passivated) rows among ``keys`` for ``node_id``: epoch+1, running, in one statement.

    What a start that finds the row idle would do after its INSERT and lookup, when the
    caller already saw it idle: a revived process answers its first call two statements
    sooner. Only while this node's lease is valid in the database's clock.
    """
    if not keys:
        return []
    now = _now_sql()
    if _is_pg():
        sql = (
            f"UPDATE {PT} AS p SET {_taken_by(now, 'p.')} FROM unnest(%s::text[], %s::text[]) AS k(l, pid) "
            f"WHERE p.label = k.l AND p.process_id = k.pid AND p.status = 'idle' AND {_lease_ok(now)} "
            f"RETURNING {_RETURNING}"
        )
        with connection.cursor() as cur:
            cur.execute(sql, [node_id, [k[0] for k in keys], [k[1] for k in keys], node_id])
            return [_row(r) for r in cur.fetchall()]
    out = []
    for label, process_id in keys:
        sql = (
            f"UPDATE {PT} SET {_taken_by(now)} WHERE label = %s AND process_id = %s AND status = 'idle' "
            f"AND {_lease_ok(now)} "
            f"RETURNING {', '.join(ROW_COLUMNS)}"
        )
        with connection.cursor() as cur:
            cur.execute(sql, [node_id, label, process_id, node_id])
            r = cur.fetchone()
        if r:
            out.append(_row(r))
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


def stop_orphans(seen: list[tuple[int, int]], owner: str | None, status: str, error: str) -> int:
    """``finish`` many rows of one dead owner at once (temporary processes lost with their node)."""
    n = 0
    for rid, epoch in seen:
        n += finish(rid, owner, epoch, status, error)
    return n


def move(row_id: int, from_node: str, epoch: int, to_node: str | None, handoff: Any = None) -> int | None:
    """Hand a row from its live owner to another node (or to nobody): epoch+1, fenced on (owner, epoch).

    The target must be live at this very statement (up, or drained: placement only
    picks a drained node when no node that is up can run the class); a node that
    began leaving (or died) since the mover chose it would never activate the row.
    """
    qs = Process.objects.filter(id=row_id, node_id=from_node, epoch=epoch, status=ProcessStatus.RUNNING)
    if to_node is not None:
        qs = qs.filter(Exists(Node.objects.filter(id=to_node, status__in=TAKES, lease_expires_at__gt=Now())))
    n = qs.update(node_id=to_node, epoch=F("epoch") + 1, updated_at=Now(), handoff=handoff)
    return epoch + 1 if n == 1 else None


def annotate(row_id: int, node_id: str, epoch: int, tags: tuple[str, ...] | None, metadata: dict | None,
             groups: tuple[str, ...] | None) -> bool:
    """Store tags, metadata or groups (those not None) of a running row, fenced on (node, epoch)."""
    updates: dict[str, Any] = {"updated_at": Now()}
    if tags is not None:
        updates["tags"] = list(tags)
    if metadata is not None:
        updates["metadata"] = metadata
    if groups is not None:
        updates["groups"] = list(groups)
    return Process.objects.filter(id=row_id, node_id=node_id, epoch=epoch, status=ProcessStatus.RUNNING).update(
        **updates) == 1


def passivate(row_id: int, node_id: str, epoch: int, state: Any) -> bool:
    """Deactivate an idle process, fenced on (node, epoch): status idle, no node, its handoff state kept."""
    return Process.objects.filter(id=row_id, node_id=node_id, epoch=epoch, status=ProcessStatus.RUNNING).update(
        status=ProcessStatus.IDLE, node=None, handoff=state, updated_at=Now()) == 1


def passivate_many(node_id: str, items: list[tuple[int, int, Any]]) -> set[int]:
    """``passivate`` for many rows (id, epoch, state) of one owner at once; the ids of the rows it changed."""
    if not items:
        return set()
    if _is_pg():
        sql = (
            f"UPDATE {PT} AS p SET status = 'idle', node_id = NULL, handoff = v.st::jsonb, updated_at = now() "
            f"FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(id, ep, st) "
            f"WHERE p.id = v.id AND p.epoch = v.ep AND p.node_id = %s AND p.status = 'running' RETURNING p.id"
        )
        # A state of None is SQL NULL, as the ORM stores it.
        params = [[i[0] for i in items], [i[1] for i in items],
                  [None if i[2] is None else _json(i[2]) for i in items], node_id]
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return {r[0] for r in cur.fetchall()}
    # One short write each, not one transaction: SQLite has one writer, and a batch held the heartbeat's
    # UPDATE waiting for its lock long enough to lose the lease.
    return {row_id for row_id, epoch, state in items if passivate(row_id, node_id, epoch, state)}


def clear_handoff(row_id: int, epoch: int) -> None:
    Process.objects.filter(id=row_id, epoch=epoch).exclude(handoff=None).update(handoff=None)


def ids_with_token(label: str, token: str) -> list[str]:
    """Process ids of the running rows one start_many call created (its rollback)."""
    return list(Process.objects.filter(label=label, start_token=token, status=ProcessStatus.RUNNING)
                .values_list("process_id", flat=True))


def stop_orphan(label: str, process_id: str, epoch: int) -> bool:
    """Stop a row whose owner is dead or absent (the client-side half of ``stop``)."""
    return (
        Process.objects.filter(label=label, process_id=process_id, epoch=epoch, status=ProcessStatus.RUNNING)
        .filter(Q(node__isnull=True) | Q(node__in=_dead_nodes()))
        .update(status=ProcessStatus.STOPPED, node=None, updated_at=Now(), last_error="stopped while its node was down")
        == 1
    )


# ---------------------------------------------------------------- fenced writes (I4)


@dataclass(frozen=True, slots=True)
class FenceToken:
    """What ``fenced`` checks: this activation (node incarnation, epoch) still owns the row, under a lease."""

    label: str
    process_id: str
    node_id: str
    epoch: int
    lease_valid: Callable[[], bool]
    ttl: float


def owns(label: str, process_id: str, node_id: str, epoch: int, *, lock: bool) -> bool:
    """Whether (node, epoch) still owns the process and the node's lease is valid in the database's clock."""
    qs = Process.objects.filter(
        label=label, process_id=process_id, node_id=node_id, epoch=epoch, status=ProcessStatus.RUNNING,
        node__lease_expires_at__gt=Now(),
    )
    if lock:
        qs = qs.select_for_update(of=("self",))
    return bool(list(qs.values_list("id", flat=True)[:1]))


@contextlib.contextmanager
def fenced(token: FenceToken) -> Iterator[None]:
    """A transaction that commits only while ``token`` owns its row (see ``HordeProcess.fenced``).

    It locks the process row (a takeover's claim skips it until the transaction
    ends) and tags the session, so that a node taking over from a frozen owner
    can end the session instead of waiting for it. As a backstop the transaction
    ends itself if it idles longer than NODE_TTL.
    """
    if not token.lease_valid():
        raise Fenced(f"{token.process_id!r} epoch {token.epoch}: this node's lease has ended")
    try:
        with transaction.atomic():
            if _is_pg():
                with connection.cursor() as cur:
                    cur.execute("SELECT set_config('application_name', %s, true), "
                                "set_config('idle_in_transaction_session_timeout', %s, true)",
                                [FENCED_APP + token.node_id, str(int(token.ttl * 1000))])
            if not owns(token.label, token.process_id, token.node_id, token.epoch, lock=True):
                raise Fenced(f"{token.process_id!r} epoch {token.epoch} is no longer owned by this activation")
            yield
            if not token.lease_valid():
                # The block outlived the lease: another node may own the row by now, so roll back.
                raise Fenced(f"{token.process_id!r} epoch {token.epoch}: the lease ended inside fenced()")
    except DatabaseError as exc:
        if not token.lease_valid():
            raise Fenced(f"{token.process_id!r} epoch {token.epoch}: the lease ended inside fenced() "
                         f"({type(exc).__name__})") from exc
        raise
