"""``manage.py hubstatus``: the readable table and the JSON, from rows made in the database."""
import json
from io import StringIO

import pytest
from django.core.management import call_command

from processhub.models import NodeStatus
from tests.admin.rows import make_node, make_processes

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("hubstatus", *args, stdout=out)
    return out.getvalue()


def test_table_lists_live_nodes_and_counts():
    a, b = make_node("alpha"), make_node("beta", age=3.5)
    make_node("old", status=NodeStatus.DOWN, lease_left=-60)
    make_processes([a, b], 30, failed_every=10)
    text = run()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["NODE", "INCARNATION", "STATUS", "HEALTH"]
    alpha = next(line for line in lines if line.startswith("alpha"))
    for text in (a.id[:8], " fresh ", " 12 ", " 44% ", "testhost/4242"):
        assert text in alpha, (text, alpha)
    assert " late " in next(line for line in lines if line.startswith("beta"))
    assert not any(line.startswith("old") for line in lines)
    echo = next(line for line in lines if line.startswith("hubtest.Echo"))
    assert echo.split()[1:] == ["12", "0", "3", "0", "15"]  # running, stopped, failed, idle, total
    assert next(line for line in lines if line.startswith("TOTAL")).split()[1:] == ["27", "0", "3", "0", "30"]
    assert "old" in run("--all-nodes")


def test_json_output():
    a = make_node("alpha")
    make_processes([a], 5)
    data = json.loads(run("--json"))
    assert [n["name"] for n in data["nodes"]] == ["alpha"]
    node = data["nodes"][0]
    assert (node["id"], node["health"], node["running"], node["share"]) == (a.id, "fresh", 5, 1.0)
    assert data["totals"] == {"running": 5, "stopped": 0, "failed": 0, "idle": 0}
    assert {c["label"]: c["total"] for c in data["classes"]} == {"hubtest.Echo": 3, "hubtest.Transient": 2}


def test_empty_cluster():
    text = run()
    assert "No live node." in text and "TOTAL" in text
    assert json.loads(run("--json"))["nodes"] == []
