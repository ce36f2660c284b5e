"""The overview at scale: 10 nodes and 100,000 process rows in PostgreSQL render in under 200 ms.

Run: ``pytest tests/admin/test_overview_perf.py -m slow -s`` (prints the timings).
"""
import os
import statistics
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.admin.rows import make_node, make_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db,
    pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="needs PostgreSQL"),
]

ROWS = 100_000
BUDGET = 0.200


def timed(client, url, runs=7, **params):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        response = client.get(url, params)
        times.append(time.perf_counter() - t0)
        assert response.status_code == 200
    return min(times), statistics.median(times)


def test_overview_renders_fast_with_100k_processes(admin_client):
    nodes = [make_node(f"node{i:02d}", lease_left=3600) for i in range(10)]  # outlives the bulk insert
    make_processes(nodes, ROWS, labels=tuple(f"hubtest.Class{i}" for i in range(8)), failed_every=97,
                   stopped_every=53, crashed_every=31)
    overview = reverse("admin:processhub_overview")
    admin_client.get(overview)  # warm caches (templates, the planner's statistics)
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(overview)
    n_queries = len(queries)  # now: every request clears the connection's query log
    assert sum(n.running for n in response.context["summary"].nodes) > 0.9 * ROWS
    best, median = timed(admin_client, overview)
    processes = reverse("admin:processhub_process_changelist")
    lists = {
        "process list": timed(admin_client, processes, runs=3),
        "process list, one node": timed(admin_client, processes, runs=3, node=nodes[3].id),
        "process list, search": timed(admin_client, processes, runs=3, q="p4242"),
        "node list": timed(admin_client, reverse("admin:processhub_node_changelist"), runs=3),
    }
    print(f"\noverview with {ROWS} processes / 10 nodes: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms, "
          f"{n_queries} queries")
    for name, (b, m) in lists.items():
        print(f"{name}: best {b * 1000:.1f} ms, median {m * 1000:.1f} ms")
    # Best of 7: the machine is shared with other test runs, and the budget is about the page, not the neighbours.
    assert best < BUDGET, f"overview took {best * 1000:.1f} ms (best of 7)"
