"""Cluster aggregates for the admin overview and ``hubstatus``: counted in SQL, never row by row.

Ages and lease times are computed by the database (``now()``), never by this
process's clock (DESIGN I2: never compare the wall clocks of two machines).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet
from django.db.models.functions import Now

from .models import Node, NodeStatus, Process, ProcessStatus

FRESH, LATE, DEAD = "fresh", "late", "dead"

# A heartbeat this many intervals old is late: one beat was missed or slow.
LATE_AFTER_BEATS = 2.5


def heartbeat_health(status: str, age: float, lease_left: float, heartbeat_interval: float) -> str:
    """fresh / late / dead at a glance, from database-clock ages in seconds.

    dead: the node said it left, or its lease ran out (others may take its
    processes over). late: the lease still holds but heartbeats stopped
    arriving on time. fresh: the last heartbeat is recent.
    """
    if status == NodeStatus.DOWN or lease_left <= 0:
        return DEAD
    if age > LATE_AFTER_BEATS * heartbeat_interval:
        return LATE
    return FRESH


def _seconds(value: timedelta | float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    # SQLite returns temporal differences as microseconds.
    return float(value) / 1e6


def with_ages(qs: QuerySet) -> QuerySet:
    """Annotate nodes with ``hb_age`` and ``lease_left`` taken from the database clock."""
    return qs.annotate(
        hb_age=ExpressionWrapper(Now() - F("heartbeat_at"), output_field=DurationField()),
        lease_left=ExpressionWrapper(F("lease_expires_at") - Now(), output_field=DurationField()),
    )


def node_health(node: Node, heartbeat_interval: float) -> tuple[str, float]:
    """(health, heartbeat age in seconds) of a node annotated by ``with_ages``."""
    age = _seconds(node.hb_age)
    return heartbeat_health(node.status, age, _seconds(node.lease_left), heartbeat_interval), age


@dataclass
class NodeLine:
    id: str
    name: str
    status: str
    health: str
    heartbeat_age: float
    started_at: datetime.datetime | None
    host: str
    pid: int | None
    running: int
    share: float = 0.0  # of all running processes, 0..1


@dataclass
class ClassLine:
    label: str
    counts: dict[str, int]
    total: int
    crashed: int = 0  # rows restarted after a crash at least once (failed rows included)


@dataclass
class Summary:
    nodes: list[NodeLine]
    classes: list[ClassLine]
    totals: dict[str, int]
    running: int
    # Running rows without a live owner: waiting for a takeover (DESIGN I6).
    unowned: int
    statuses: list[str] = field(default_factory=lambda: [value for value, _ in ProcessStatus.choices])


def summary(heartbeat_interval: float, include_down: bool = False) -> Summary:
    """Nodes that are not down (and whose lease still holds), their loads, and counts per class and status.

    Two queries whatever the number of rows: the nodes, and one GROUP BY
    (owner, class, status) over the process rows, from which both the loads and
    the per-class counts are summed here (one scan of the table, not two).
    """
    nodes_qs = with_ages(Node.objects.all())
    if not include_down:
        nodes_qs = nodes_qs.exclude(status=NodeStatus.DOWN).filter(lease_expires_at__gt=Now())
    nodes = list(nodes_qs.order_by("name", "-started_at"))
    per_owner: dict[str | None, int] = {}
    by_class: dict[str, dict[str, int]] = {}
    crashed: dict[str, int] = {}
    groups = (
        Process.objects.order_by()
        .values_list("node_id", "label", "status")
        .annotate(n=Count("id"), crashed=Count("id", filter=Q(restarts__gt=0)))
    )
    for owner, label, status, n, n_crashed in groups:
        if status == ProcessStatus.RUNNING:
            per_owner[owner] = per_owner.get(owner, 0) + n
        counts = by_class.setdefault(label, {})
        counts[status] = counts.get(status, 0) + n
        crashed[label] = crashed.get(label, 0) + n_crashed
    running = sum(per_owner.values())
    lines = []
    live_ids = set()
    for n in nodes:
        health, age = node_health(n, heartbeat_interval)
        count = per_owner.get(n.id, 0)
        if health != DEAD:
            live_ids.add(n.id)
        lines.append(NodeLine(n.id, n.name, n.status, health, age, n.started_at, n.host, n.pid, count,
                              count / running if running else 0.0))
    unowned = sum(c for owner, c in per_owner.items() if owner not in live_ids)
    classes = [ClassLine(label, counts, sum(counts.values()), crashed.get(label, 0))
               for label, counts in sorted(by_class.items())]
    totals = {s: sum(c.counts.get(s, 0) for c in classes) for s, _ in ProcessStatus.choices}
    return Summary(lines, classes, totals, running, unowned)


def recent_failures() -> QuerySet:
    """Failed processes, newest first (the (status, node) index finds them without a full scan).

    Running processes that crashed and were restarted are counted per class in
    ``summary`` instead: finding them row by row would scan the whole table.
    """
    return (
        Process.objects.filter(status=ProcessStatus.FAILED)
        .select_related("node")
        .order_by("-updated_at", "-id")
    )
