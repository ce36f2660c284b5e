"""Prometheus metrics: node and client hooks (embedded), the registry's counts (database), runhub's port (cluster)."""
import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from processhub import metrics
from processhub.exceptions import ProcessCrashed
from tests.admin.rows import make_node, make_processes
from tests.cluster.harness import wait_for
from tests.conftest import needs_services
from tests.hubtest.processes import Echo


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_node_and_client_metrics(embedded):
    node = embedded.node
    calls = value("processhub_handle_seconds_count", node=node.name, label=Echo.label, kind="call")
    casts = value("processhub_handle_seconds_count", node=node.name, label=Echo.label, kind="cast")
    client_calls = value("processhub_client_seconds_count", label=Echo.label, kind="call")
    restarts = value("processhub_restarts_total", node=node.name, label=Echo.label)
    crashes = value("processhub_crashes_total", node=node.name, label=Echo.label)
    errors = value("processhub_client_errors_total", label=Echo.label, kind="call", error="ProcessCrashed")
    for i in range(5):
        Echo.call("m", {"i": i})
    Echo.cast("m", {})
    wait_for(lambda: Echo.call("m", {})["casts"] == 1, 5, "the cast")
    with pytest.raises(ProcessCrashed):
        Echo.call("m", {"op": "crash"})
    wait_for(lambda: value("processhub_restarts_total", node=node.name, label=Echo.label) == restarts + 1, 5,
             "the restart counted")
    # 6 handled calls (the crashing one is not a handled call), 1 cast; the client saw 7 calls, one failed.
    assert value("processhub_handle_seconds_count", node=node.name, label=Echo.label, kind="call") == calls + 6
    assert value("processhub_handle_seconds_count", node=node.name, label=Echo.label, kind="cast") == casts + 1
    assert value("processhub_client_seconds_count", label=Echo.label, kind="call") == client_calls + 7
    assert value("processhub_client_errors_total", label=Echo.label, kind="call", error="ProcessCrashed") == errors + 1
    assert value("processhub_crashes_total", node=node.name, label=Echo.label) == crashes + 1
    # Lease renewals are counted and timed; activations are counted from the node's slots at scrape time.
    renewals = value("processhub_lease_renewals_total", node=node.name, result="ok")
    wait_for(lambda: value("processhub_lease_renewals_total", node=node.name, result="ok") > renewals, 5,
             "a heartbeat")
    assert value("processhub_lease_renewal_seconds_count", node=node.name) > 0
    activations = value("processhub_activations", node=node.name, label=Echo.label)
    assert activations == node.activation_counts()[Echo.label] == 1
    assert value("processhub_node_lease_valid", node=node.name) == 1.0


@pytest.mark.django_db
def test_registry_counts_and_view(admin_client):
    a, b = make_node("alpha"), make_node("beta")
    make_processes([a, b], 40, failed_every=10)
    metrics.clear_registry_counts()
    got = samples(metrics.render_latest().decode())
    assert got[("processhub_processes", (("label", "hubtest.Echo"), ("node", "alpha"), ("status", "running")))] == 16
    assert got[("processhub_processes", (("label", "hubtest.Echo"), ("node", ""), ("status", "failed")))] == 4
    assert got[("processhub_nodes", (("status", "up"),))] == 2
    response = admin_client.get("/metrics/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert b"processhub_processes" in response.content


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_services
@pytest.mark.cluster
def test_runhub_serves_metrics_on_its_port(cluster_factory):
    port = _free_port()
    cluster = cluster_factory(settings={"METRICS_PORT": port})
    cluster.start_node("m")
    for i in range(4):
        Echo.call(f"mx{i}", {})

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return samples(r.read().decode())

    renewals = ("processhub_lease_renewals_total", (("node", "m"), ("result", "ok")))
    got = wait_for(lambda: (g := scrape()).get(renewals, 0) >= 1 and g, 10, "a heartbeat on the metrics endpoint")
    assert got[("processhub_activations", (("label", Echo.label), ("node", "m")))] == 4
    assert got[("processhub_handle_seconds_count", (("kind", "call"), ("label", Echo.label), ("node", "m")))] == 4
    assert got[("processhub_lease_renewal_seconds_count", (("node", "m"),))] >= 1
    assert not any(name == "processhub_processes" for name, _ in got)  # registry counts are the web's job
