"""Celery integration: a worker bootstep that hosts a hub node, and periodic registry maintenance.

Wire it into the project's Celery app (``proj/celery.py``)::

    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
    install(app)                # adds `celery worker --hub-node NAME`
    schedule_maintenance(app)   # health report and retention purge under `celery beat`

Every worker is a hub *client* without any of this: a task calls
``MyProcess.call(...)`` through the runtime of its OS process (one per prefork
child, one shared by all threads of a threads pool), never one connection set
per task. A worker started with ``--hub-node NAME`` also *hosts* processes: the
node runs in the worker's main process (never in prefork children, which come
and go with ``--max-tasks-per-child`` and autoscaling), with the same heartbeat,
lease, self-fencing and drain as ``runhub``. Warm or cold shutdown drains it:
its processes move to the other live nodes with their handoff state.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery import bootsteps, shared_task, signals

if TYPE_CHECKING:
    from celery import Celery

    from processhub.node import Node

logger = logging.getLogger(__name__)

PURGE_TASK = "processhub.purge_finished"
HEALTH_TASK = "processhub.registry_health"


# ====================================================================== hosting a node


def start_node(name: str) -> Node:
    """Start a hub node named ``name`` in this OS process's runtime and return it (blocks until registered)."""
    from processhub.node import Node
    from processhub.runtime import get_runtime

    rt = get_runtime()
    if isinstance(rt.node, Node):
        # EMBEDDED is on: get_runtime() already started a node in this process.
        logger.warning("processhub: this process already hosts node %s; not starting %s", rt.node.name, name)
        return rt.node
    node = Node(rt, name)
    rt.run_sync(node.start(), timeout=30)
    logger.info("processhub: node %s started in the Celery worker (incarnation %s)", node.name, node.id)
    return node


class HubNode(bootsteps.StartStopStep):
    """Runs a hub node in the worker's main process when the worker is started with ``--hub-node NAME``.

    Started after the pool, so the first prefork children are forked before the
    node's threads exist; children forked later (replacements) make their own
    runtime on first use because the runtime checks its pid.

    Like ``runhub``, a worker whose node finds its lease ended while a plain
    ``def`` handler it cannot stop is still running ends its OS process (status
    70) rather than let that handler run beside the new owner; run the worker
    under a process manager that restarts it.
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, hub_node: str | None = None, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.node_name = hub_node or None
        self.node: Node | None = None
        self._drain: concurrent.futures.Future | None = None

    def include_if(self, worker: Any) -> bool:
        return bool(self.node_name)

    def start(self, worker: Any) -> None:
        from celery.utils.nodenames import host_format

        self.node = start_node(host_format(self.node_name))
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def _on_shutting_down(self, sender: Any = None, **kwargs: Any) -> None:
        # Sent from the worker's SIGTERM/SIGINT/SIGQUIT handler: only hand the
        # drain to the runtime loop. With a solo pool the main thread may still
        # be running a task for minutes; the processes move meanwhile.
        self.begin_drain()

    def begin_drain(self) -> concurrent.futures.Future | None:
        """Start draining the node on its loop (once); returns the future of the drain."""
        if self._drain is None and self.node is not None:
            self._drain = asyncio.run_coroutine_threadsafe(self.node.drain(), self.node.rt.loop)
        return self._drain

    def stop(self, worker: Any) -> None:
        """Warm shutdown: wait (bounded) until every process has been handed off and the node has left."""
        from processhub.conf import hub_settings

        fut = self.begin_drain()
        if fut is None or self.node is None:
            return
        # Node.drain waits SHUTDOWN_TIMEOUT + 1 for hand-offs, then up to SHUTDOWN_TIMEOUT for terminate().
        timeout = 2 * hub_settings().SHUTDOWN_TIMEOUT + 5
        try:
            fut.result(timeout)
        except concurrent.futures.TimeoutError:
            logger.warning("processhub: drain of node %s did not finish in %.0fs; its lease expires anyway",
                           self.node.name, timeout)
        except Exception:
            logger.exception("processhub: drain of node %s failed", self.node.name)

    # A cold shutdown (SIGQUIT) cancels tasks, but moving processes still beats waiting for NODE_TTL.
    terminate = stop

    def info(self, worker: Any) -> dict:
        """Shown by ``celery inspect stats``."""
        node = self.node
        if node is None:
            return {}
        return {"processhub": {"node": node.name, "incarnation": node.id, "processes": len(node.activations),
                               "draining": node.draining, "fenced": node.fenced}}


def install(app: Celery) -> None:
    """Add ``--hub-node NAME`` to ``celery worker`` and the bootstep behind it (inert without the option)."""
    from click import Option

    app.user_options["worker"].add(Option(
        ("--hub-node",), default=None, metavar="NAME",
        help="Also run a processhub node named NAME in this worker's main process "
             "(like `manage.py runhub --node NAME`; %h expands to the host name).",
    ))
    app.steps["worker"].add(HubNode)


# ====================================================================== maintenance


def purge_finished(retention: float | None = None, batch: int = 1000, max_batches: int = 100) -> dict:
    """Delete stopped/failed process rows and down node rows older than ``retention`` seconds (database clock).

    Defaults to PROCESSHUB ``RETENTION``. Rows are deleted in batches whose
    delete statement re-checks the conditions, so a process restarted between
    the select and the delete is kept. A node row is kept while any process
    row still names it.
    """
    from django.db.models import Exists, OuterRef, Q
    from django.db.models.functions import Now

    from processhub.conf import hub_settings
    from processhub.models import Node, NodeStatus, Process, ProcessStatus

    keep = hub_settings().RETENTION if retention is None else float(retention)
    cutoff = Now() - timedelta(seconds=keep)
    old_rows = Q(status__in=[ProcessStatus.STOPPED, ProcessStatus.FAILED]) & (
        Q(updated_at__lt=cutoff) | Q(updated_at__isnull=True, started_at__lt=cutoff)
    )
    old_nodes = Q(status=NodeStatus.DOWN) & (
        Q(stopped_at__lt=cutoff) | Q(stopped_at__isnull=True, lease_expires_at__lt=cutoff)
    ) & ~Exists(Process.objects.filter(node=OuterRef("pk")))

    counts = {"processes": 0, "nodes": 0}
    more = False
    for model, cond, key in ((Process, old_rows, "processes"), (Node, old_nodes, "nodes")):
        for _ in range(max_batches):
            ids = list(model.objects.filter(cond).order_by("pk").values_list("pk", flat=True)[:batch])
            if ids:
                counts[key] += model.objects.filter(cond, pk__in=ids).delete()[1].get(model._meta.label, 0)
            if len(ids) < batch:
                break
        else:
            more = True
    if counts["processes"] or counts["nodes"]:
        logger.info("processhub: purged %d process rows and %d node rows older than %.0fs", counts["processes"],
                    counts["nodes"], keep)
    return {**counts, "retention": keep, "more": more}


def registry_health(examples: int = 10) -> dict:
    """A JSON report on the registry; ``ok`` is False when processes that should run have no live owner too long.

    A running row whose owner is down, expired or absent is an orphan; the live
    nodes take it over within about RECONCILE_INTERVAL of its owner's lease
    ending (DESIGN I6). An orphan still waiting NODE_TTL + RECONCILE_INTERVAL
    after that is *stuck*: no live node, or no live node has its class.
    """
    from django.db.models import Count, Q
    from django.db.models.functions import Coalesce, Now

    from processhub.conf import hub_settings
    from processhub.models import Node, NodeStatus, Process, ProcessStatus

    hs = hub_settings()
    nodes = Node.objects.filter(status__in=[NodeStatus.UP, NodeStatus.DRAINING], lease_expires_at__gt=Now())
    live = sorted(nodes.filter(status=NodeStatus.UP).values_list("name", flat=True))
    draining = sorted(nodes.filter(status=NodeStatus.DRAINING).values_list("name", flat=True))
    by_status = dict(Process.objects.order_by().values_list("status").annotate(n=Count("id")))
    orphans = Process.objects.filter(status=ProcessStatus.RUNNING).filter(
        Q(node__isnull=True) | Q(node__status=NodeStatus.DOWN) | Q(node__lease_expires_at__lte=Now())
    ).alias(since=Coalesce("node__lease_expires_at", "updated_at", "started_at"))
    stuck = orphans.filter(since__lt=Now() - timedelta(seconds=hs.NODE_TTL + hs.RECONCILE_INTERVAL))
    n_stuck = stuck.count()
    report = {
        "ok": n_stuck == 0,
        "live_nodes": live,
        "draining_nodes": draining,
        "processes": {s: by_status.get(s, 0) for s in ProcessStatus.values},
        "orphans": orphans.count(),
        "stuck": n_stuck,
        "stuck_examples": [list(k) for k in stuck.order_by("pk").values_list("label", "process_id")[:examples]],
    }
    if report["ok"]:
        logger.info("processhub: registry healthy: %d live nodes, %d running processes", len(live),
                    report["processes"]["running"])
    else:
        logger.warning("processhub: %d running processes have had no live owner for too long (live nodes: %s); "
                       "e.g. %s", n_stuck, ", ".join(live) or "none", report["stuck_examples"])
    return report


@shared_task(name=PURGE_TASK)
def purge_finished_task(retention: float | None = None) -> dict:
    """Celery task around :func:`purge_finished`."""
    return purge_finished(retention)


@shared_task(name=HEALTH_TASK)
def registry_health_task() -> dict:
    """Celery task around :func:`registry_health`."""
    return registry_health()


def schedule_maintenance(app: Celery, health_every: float | None = 60.0, purge_every: float | None = 3600.0) -> None:
    """Have ``celery beat`` run the health report and the purge every so many seconds (None: not at all).

    Entries already in ``beat_schedule`` under the same names win, so a project
    can retune them with ``CELERY_BEAT_SCHEDULE`` in its settings.
    """

    # Reading app.conf here would load Django settings while they may still be
    # importing (the project's celery.py is imported by its settings package).
    @app.on_after_configure.connect(weak=False)
    def _add(sender: Celery, **kwargs: Any) -> None:
        ours = {name: {"task": name, "schedule": float(every)}
                for name, every in ((HEALTH_TASK, health_every), (PURGE_TASK, purge_every)) if every}
        sender.conf.beat_schedule = {**ours, **(sender.conf.beat_schedule or {})}
