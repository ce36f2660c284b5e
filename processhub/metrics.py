"""Prometheus metrics of nodes and clients, and of the registry's counts in the database.

Needs ``prometheus-client`` (``pip install processhub[metrics]``); without it
every hook here is a no-op and ``start_http_server`` refuses to start.

What each OS process exports:

* ``runhub`` (on ``METRICS_PORT``) and an embedded node: ``processhub_activations``
  (running here, by class), handler latency, restarts, crashes, moves,
  failovers, fences, lease renewals and their latency, all labelled ``node``.
* Every process that calls processes (web, Celery, runhub): the caller's view
  of calls and casts (``processhub_client_seconds``, ``processhub_client_errors_total``).
* ``render_latest()`` / ``metrics_view``: all of the above for this OS process
  plus ``processhub_processes{node,label,status}`` and ``processhub_nodes{status}``
  counted in SQL (at most once per ``REGISTRY_COUNTS_TTL`` seconds per OS
  process, however often it is scraped), meant for one web process (every
  node exporting them would count the same rows N times).

Who may read them: ``runhub``'s port listens on ``METRICS_ADDR`` (loopback by
default); ``metrics_view`` answers a user with ``processhub.view_metrics`` or a
request carrying ``Authorization: Bearer <METRICS_TOKEN>``, else 401/403.

Hot path: a call costs one dict lookup and one ``Histogram.observe`` (about a
microsecond) on each side; label children are cached per (class, kind).
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

try:
    import prometheus_client as prom
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # optional dependency
    prom = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

# Calls over Redis take a fraction of a millisecond to seconds; heartbeats a few ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

if prom is not None:
    HANDLE_SECONDS = prom.Histogram(
        "processhub_handle_seconds", "Time a node's handler spent on one call or cast.",
        ["node", "label", "kind"], buckets=LATENCY_BUCKETS,
    )
    CLIENT_SECONDS = prom.Histogram(
        "processhub_client_seconds", "Calls (round trip, retries included) and casts (send) as the caller saw them.",
        ["label", "kind"], buckets=LATENCY_BUCKETS,
    )
    CLIENT_ERRORS = prom.Counter(
        "processhub_client_errors", "Calls and casts that raised, by exception class.", ["label", "kind", "error"]
    )
    RESTARTS = prom.Counter("processhub_restarts", "Restarts in place (after a crash or an exit).", ["node", "label"])
    CRASHES = prom.Counter("processhub_crashes", "Handler exceptions.", ["node", "label"])
    MOVES = prom.Counter("processhub_moves", "Processes handed to another node (drain, move).", ["node", "label"])
    FAILOVERS = prom.Counter("processhub_failovers", "Processes taken over from a dead or absent owner.", ["node"])
    FENCES = prom.Counter("processhub_fences", "Times the node stopped everything because its lease was lost.",
                          ["node"])
    LEASE_RENEWALS = prom.Counter(
        "processhub_lease_renewals", "Heartbeats by result: ok, refused (lease already gone), error, hung.",
        ["node", "result"],
    )
    LEASE_SECONDS = prom.Histogram(
        "processhub_lease_renewal_seconds", "Latency of one heartbeat statement.", ["node"], buckets=LATENCY_BUCKETS
    )

class MetricsNode(Protocol):
    """What metrics read of a node (the node's package imports this module, not the reverse)."""

    name: str
    listeners: list[Callable[..., None]]

    def lease_valid(self) -> bool: ...
    def activation_counts(self) -> dict[str, int]: ...


_nodes: weakref.WeakSet[MetricsNode] = weakref.WeakSet()
# The scrape runs on the HTTP server's thread while nodes are added on their loops. Two locks:
# registering the collector calls its collect() once (to learn the metric names).
_nodes_lock = threading.Lock()
_collector_lock = threading.Lock()
_collector_registered = False


def enabled() -> bool:
    return prom is not None


class NodeCollector:
    """``processhub_activations`` and ``processhub_node_lease_valid`` of the nodes in this OS process, at scrape time.

    Counted by ``node.activation_counts()`` when scraped, so nothing is done per start or stop.
    """

    def collect(self):
        activations = GaugeMetricFamily(
            "processhub_activations", "Activations running on this node, by class.", labels=["node", "label"]
        )
        lease = GaugeMetricFamily("processhub_node_lease_valid", "1 while the node holds a valid lease.",
                                  labels=["node"])
        with _nodes_lock:
            nodes = list(_nodes)
        for node in nodes:
            for label, n in sorted(node.activation_counts().items()):
                activations.add_metric([node.name, label], n)
            lease.add_metric([node.name], 1.0 if node.lease_valid() else 0.0)
        yield activations
        yield lease


# The registry's counts are a GROUP BY over every process row: read at most this often per OS process, so
# a scrape storm (several Prometheus replicas, a short scrape interval, a reload loop) costs no more.
REGISTRY_COUNTS_TTL = 10.0
_counts_lock = threading.Lock()
_counts: tuple[float, list[tuple[str, str, str, int]], list[tuple[str, int]]] | None = None


def registry_counts(now: float | None = None) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, int]]]:
    """(node name, label, status, n) of the process rows and (status, n) of the node rows, cached for a while.

    Two GROUP BY queries when the cached counts are older than
    ``REGISTRY_COUNTS_TTL`` (``now`` is ``time.monotonic()``); concurrent
    scrapes wait for the one that counts instead of counting again.
    """
    global _counts
    from django.db.models import Count

    from .models import Node, Process

    now = time.monotonic() if now is None else now
    with _counts_lock:
        if _counts is not None and now - _counts[0] < REGISTRY_COUNTS_TTL:
            return _counts[1], _counts[2]
        processes = [(name or "", label, status, n) for name, label, status, n in
                     Process.objects.order_by().values_list("node__name", "label", "status").annotate(n=Count("id"))]
        nodes = list(Node.objects.order_by().values_list("status").annotate(n=Count("id")))
        _counts = (now, processes, nodes)
        return processes, nodes


def clear_registry_counts() -> None:
    """Forget the cached counts (tests; the next scrape counts again)."""
    global _counts
    with _counts_lock:
        _counts = None


class RegistryCollector:
    """Process rows by node, class and status, and node rows by status (``registry_counts()``)."""

    def collect(self):
        process_rows, node_rows = registry_counts()
        processes = GaugeMetricFamily(
            "processhub_processes", "Process rows in the registry by node name ('' = none), class and status.",
            labels=["node", "label", "status"],
        )
        for node_name, label, status, n in process_rows:
            processes.add_metric([node_name, label, status], n)
        yield processes
        nodes = GaugeMetricFamily("processhub_nodes", "Node incarnations in the registry by status.",
                                  labels=["status"])
        for status, n in node_rows:
            nodes.add_metric([status], n)
        yield nodes


def _register_node_collector() -> None:
    global _collector_registered
    with _collector_lock:
        if not _collector_registered:
            prom.REGISTRY.register(NodeCollector())
            _collector_registered = True


def instrument(node: Any) -> None:
    """Hook a node's calls, lease renewals and lifecycle events into the metrics."""
    if prom is None:
        return
    with _nodes_lock:
        _nodes.add(node)
    _register_node_collector()
    handle_children: dict[tuple[str, str], Any] = {}
    lease_children: dict[str, Any] = {}
    lease_hist = LEASE_SECONDS.labels(node.name)

    def metrics_call(label: str, seconds: float, kind: str = "call") -> None:
        child = handle_children.get((label, kind))
        if child is None:
            child = handle_children[(label, kind)] = HANDLE_SECONDS.labels(node.name, label, kind)
        child.observe(seconds)

    def metrics_lease(seconds: float, result: str) -> None:
        child = lease_children.get(result)
        if child is None:
            child = lease_children[result] = LEASE_RENEWALS.labels(node.name, result)
        child.inc()
        if result != "hung":
            lease_hist.observe(seconds)

    node.metrics_call = metrics_call
    node.metrics_lease = metrics_lease
    node.listeners.append(_on_lifecycle)


def _on_lifecycle(event: str, node: MetricsNode, slot: Any, **extra: Any) -> None:
    if event in ("node_up", "node_down"):
        # A node that shut down leaves the scrape (a new one of the same name must not share its gauges with
        # a stale lease_valid 0); a fenced one stays, showing 0, and is back with its node_up.
        with _nodes_lock:
            if event == "node_up":
                _nodes.add(node)
            elif extra.get("reason") == "shutdown":
                _nodes.discard(node)
    if event == "restarted":
        RESTARTS.labels(node.name, slot.label).inc()
    elif event == "crashed":
        CRASHES.labels(node.name, slot.label).inc()
    elif event == "moved":
        MOVES.labels(node.name, slot.label).inc()
    elif event == "took_over":
        FAILOVERS.labels(node.name).inc(extra.get("count", 1))
    elif event == "node_down" and extra.get("reason") != "shutdown":
        FENCES.labels(node.name).inc()


def client_observer() -> Callable[[str, str, float, BaseException | None], None] | None:
    """The per-call hook of ``Client`` (None without prometheus-client, so the client skips the timing)."""
    if prom is None:
        return None
    children: dict[tuple[str, str], Any] = {}

    def observe(label: str, kind: str, seconds: float, error: BaseException | None) -> None:
        child = children.get((label, kind))
        if child is None:
            child = children[(label, kind)] = CLIENT_SECONDS.labels(label, kind)
        child.observe(seconds)
        if error is not None:
            CLIENT_ERRORS.labels(label, kind, type(error).__name__).inc()

    return observe


def start_http_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve this OS process's metrics on ``addr:port`` (runhub's METRICS_ADDR and METRICS_PORT), without auth.

    Loopback by default: anything that can reach the port reads the metrics, so
    bind it to an address only your Prometheus can reach.
    """
    if prom is None:
        raise ImproperlyConfigured("PROCESSHUB METRICS_PORT needs prometheus-client: pip install processhub[metrics]")
    _register_node_collector()
    prom.start_http_server(port, addr)
    logger.info("processhub: metrics on http://%s:%s/metrics", addr, port)


def render_latest(registry_counts: bool = True) -> bytes:
    """This OS process's metrics in the Prometheus text format, plus the registry's counts from the database."""
    if prom is None:
        raise ImproperlyConfigured("processhub metrics need prometheus-client: pip install processhub[metrics]")
    out = prom.generate_latest(prom.REGISTRY)
    if registry_counts:
        # A throw-away registry: the counts are read per scrape, never kept in this process.
        db = prom.CollectorRegistry(auto_describe=False)
        db.register(RegistryCollector())
        out += prom.generate_latest(db)
    return out


def metrics_view(request: HttpRequest) -> HttpResponse:
    """A Django view of ``render_latest()`` for a user with ``processhub.view_metrics`` or a METRICS_TOKEN bearer.

    A bearer token that does not match is 401 (whatever the session); a
    logged-in user without the permission is 403; anybody else is 401.
    """
    from django.http import HttpResponse

    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(render_latest(), content_type=prom.CONTENT_TYPE_LATEST if prom else "text/plain")


def _refusal(request: HttpRequest) -> HttpResponse | None:
    from django.http import HttpResponse

    from .conf import hub_settings

    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = hub_settings().METRICS_TOKEN
        # Constant time: the comparison must not tell how many leading characters were right.
        if token and hmac.compare_digest(credentials.strip().encode(), str(token).encode()):
            return None
        response = HttpResponse("invalid metrics token\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="processhub metrics", error="invalid_token"'
        return response
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        if user.has_perm("processhub.view_metrics"):
            return None
        return HttpResponse("needs the processhub.view_metrics permission\n", status=403, content_type="text/plain")
    response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="processhub metrics"'
    return response
