"""Registry rows made directly in the database, for admin pages that need no live cluster."""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from processhub.models import Node, NodeStatus, Process, ProcessStatus


def make_node(name: str, *, age: float = 0.2, lease_left: float = 4.0, status: str = NodeStatus.UP,
              pid: int = 4242) -> Node:
    """A node row whose last heartbeat is ``age`` seconds old and whose lease ends in ``lease_left`` seconds."""
    now = timezone.now()
    return Node.objects.create(
        id=uuid.uuid4().hex, name=name, status=status, heartbeat_at=now - timedelta(seconds=age),
        lease_expires_at=now + timedelta(seconds=lease_left), started_at=now - timedelta(minutes=5),
        host="testhost", pid=pid, channel=f"test.node.{name}",
    )


def make_processes(nodes: list[Node], count: int, labels: tuple[str, ...] = ("hubtest.Echo", "hubtest.Transient"),
                   failed_every: int = 0, stopped_every: int = 0, crashed_every: int = 0, prefix: str = "p",
                   batch: int = 5000) -> int:
    """Bulk-insert ``count`` rows spread round-robin over ``nodes`` and ``labels``; some failed/stopped/crashed."""
    now = timezone.now()
    made = 0
    while made < count:
        rows = []
        for i in range(made, min(count, made + batch)):
            status = ProcessStatus.RUNNING
            node = nodes[i % len(nodes)] if nodes else None
            error = ""
            restarts = 0
            if failed_every and i % failed_every == 0:
                status, node, error, restarts = ProcessStatus.FAILED, None, "Traceback...\nValueError: boom", 3
            elif stopped_every and i % stopped_every == 1:
                status, node = ProcessStatus.STOPPED, None
            elif crashed_every and i % crashed_every == 2:
                restarts, error = 1, "Traceback...\nKeyError: 'x'"
            rows.append(Process(
                process_id=f"{prefix}{i}", label=labels[i % len(labels)], arg=f"{prefix}{i}", node=node,
                epoch=1 + restarts, status=status, restart="permanent", restarts=restarts, last_error=error,
                started_at=now, updated_at=now - timedelta(seconds=i % 1000), metadata={"i": i} if i % 7 == 0 else {},
            ))
        Process.objects.bulk_create(rows)
        made += len(rows)
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(f"ANALYZE {Process._meta.db_table}")
    return made
