"""Admin pages without a live cluster: lists, filters, overview, read-only rows, permissions, query counts."""
import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from processhub import overview
from processhub.admin import _last_line
from processhub.models import NodeStatus, Process, ProcessStatus
from tests.admin.rows import make_node, make_processes

pytestmark = pytest.mark.django_db

PROCESSES = reverse("admin:processhub_process_changelist")
NODES = reverse("admin:processhub_node_changelist")
OVERVIEW = reverse("admin:processhub_overview")


@pytest.mark.parametrize(
    "status, age, lease_left, expected",
    [
        (NodeStatus.UP, 0.1, 4.0, overview.FRESH),
        (NodeStatus.UP, 2.4, 2.0, overview.FRESH),  # within 2.5 beats of 1 s
        (NodeStatus.UP, 2.6, 2.0, overview.LATE),
        (NodeStatus.DRAINING, 0.5, 4.0, overview.FRESH),
        (NodeStatus.UP, 4.0, 0.0, overview.DEAD),  # lease ran out by the database clock
        (NodeStatus.UP, 9.0, -4.0, overview.DEAD),
        (NodeStatus.DOWN, 0.1, 4.0, overview.DEAD),  # said goodbye
    ],
)
def test_heartbeat_health_table(status, age, lease_left, expected):
    assert overview.heartbeat_health(status, age, lease_left, 1.0) == expected


def test_last_line_of_a_traceback():
    assert _last_line("Traceback (most recent call last):\n  File x\nValueError: boom\n\n") == "ValueError: boom"
    assert _last_line("") == ""


@pytest.fixture
def cluster_rows():
    a, b = make_node("alpha"), make_node("beta", age=3.5)  # beta: heartbeats late, lease still valid
    dead = make_node("gamma", age=9.0, lease_left=-4.0)
    make_processes([a, b, dead], 60, failed_every=10, stopped_every=10, crashed_every=10)
    return a, b, dead


def test_overview_shows_nodes_load_classes_and_failures(admin_client, cluster_rows):
    a, b, dead = cluster_rows
    response = admin_client.get(OVERVIEW)
    assert response.status_code == 200
    s = response.context["summary"]
    assert [n.name for n in s.nodes] == ["alpha", "beta"]  # gamma's lease ran out: not live
    assert {n.name: n.health for n in s.nodes} == {"alpha": overview.FRESH, "beta": overview.LATE}
    by_name = {n.name: n for n in s.nodes}
    running = Process.objects.filter(status=ProcessStatus.RUNNING)
    assert by_name["alpha"].running == running.filter(node=a).count() > 0
    assert s.unowned == running.filter(node=dead).count() > 0
    assert s.totals == {st: Process.objects.filter(status=st).count() for st in ProcessStatus.values}
    assert {c.label for c in s.classes} == {"hubtest.Echo", "hubtest.Transient"}
    html = response.content.decode()
    assert f"?node={a.id}" in html and "label=hubtest.Echo" in html
    failures = response.context["failures"]
    assert [p.pk for p, _, _ in failures] == list(
        Process.objects.filter(status=ProcessStatus.FAILED).order_by("-updated_at", "-id").values_list("pk", flat=True))
    assert "ValueError: boom" in html
    crashed = {c.label: c.crashed for c in s.classes}
    assert crashed == {label: Process.objects.filter(label=label, restarts__gt=0).count() for label in crashed}
    assert sum(crashed.values()) > Process.objects.filter(status=ProcessStatus.FAILED).count()  # running ones too


def test_overview_pages_failures_without_counting(admin_client):
    make_processes([], 45, failed_every=1)
    first = admin_client.get(OVERVIEW)
    assert len(first.context["failures"]) == 20 and first.context["fnext"] == 2
    third = admin_client.get(OVERVIEW, {"fpage": 3})
    assert len(third.context["failures"]) == 5 and third.context["fnext"] is None and third.context["fprev"] == 2
    assert admin_client.get(OVERVIEW, {"fpage": "junk"}).status_code == 200


def test_overview_query_count_does_not_grow_with_rows(admin_client):
    a = make_node("alpha")
    make_processes([a], 10, failed_every=3)
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as small:
        admin_client.get(OVERVIEW)
    make_processes([a, make_node("beta")], 400, failed_every=3, prefix="more")
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as large:
        admin_client.get(OVERVIEW)
    assert len(large) == len(small) > 0, [q["sql"] for q in large]


def test_process_list_filters_and_search(admin_client, cluster_rows):
    a, b, _ = cluster_rows
    response = admin_client.get(PROCESSES, {"node": a.id})
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    assert shown and all(p.node_id == a.id for p in shown)
    assert len(shown) == Process.objects.filter(node=a).count()
    by_status = admin_client.get(PROCESSES, {"status__exact": "failed"}).context["cl"].result_list
    assert by_status and all(p.status == "failed" for p in by_status)
    by_label = admin_client.get(PROCESSES, {"label": "hubtest.Transient"}).context["cl"].result_list
    assert by_label and all(p.label == "hubtest.Transient" for p in by_label)
    unplaced = admin_client.get(PROCESSES, {"node": "none"}).context["cl"].result_list
    assert unplaced and all(p.node_id is None for p in unplaced)
    crashed = admin_client.get(PROCESSES, {"crashed": "yes"}).context["cl"].result_list
    assert crashed and all(p.restarts > 0 or p.status == "failed" for p in crashed)
    found = admin_client.get(PROCESSES, {"q": "p42"}).context["cl"].result_list
    assert [p.process_id for p in found] == ["p42"]
    html = admin_client.get(PROCESSES).content.decode().lower()
    for column in ("epoch", "restarts", "last error", "metadata", "cluster overview", "move to node"):
        assert column in html


def test_process_list_costs_constant_queries(admin_client):
    a, b = make_node("alpha"), make_node("beta")
    make_processes([a, b], 10)
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(PROCESSES).status_code == 200
    make_processes([a, b], 300, prefix="q", failed_every=5)
    connection.queries_log.clear()
    with CaptureQueriesContext(connection) as large:
        response = admin_client.get(PROCESSES)
    assert len(response.context["cl"].result_list) == 100
    assert len(large) == len(small) > 0, [q["sql"] for q in large]


def test_node_list_shows_health_age_count_and_host(admin_client, cluster_rows):
    a, b, dead = cluster_rows
    response = admin_client.get(NODES)
    html = response.content.decode()
    assert response.status_code == 200
    for text in ("alpha", "fresh", "late", "dead", "testhost/4242", a.id[:8], "Cluster overview"):
        assert text in html
    rows = {n.name: n for n in response.context["cl"].result_list}
    assert rows["alpha"].running_count == Process.objects.filter(node=a, status="running").count()


def test_registry_rows_are_not_editable(admin_client, cluster_rows):
    a, _, _ = cluster_rows
    p = Process.objects.filter(node=a).first()
    assert admin_client.get(reverse("admin:processhub_process_add")).status_code == 403
    assert admin_client.get(reverse("admin:processhub_node_add")).status_code == 403
    view = admin_client.get(reverse("admin:processhub_process_change", args=[p.pk]))
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode() and p.process_id in view.content.decode()
    before = (p.epoch, p.node_id, p.status)
    posted = admin_client.post(reverse("admin:processhub_process_change", args=[p.pk]),
                               {"epoch": 99, "status": "stopped", "node": ""})
    assert posted.status_code == 403
    p.refresh_from_db()
    assert (p.epoch, p.node_id, p.status) == before
    for url in (reverse("admin:processhub_process_delete", args=[p.pk]),
                reverse("admin:processhub_node_delete", args=[a.pk])):
        assert admin_client.post(url, {"post": "yes"}).status_code == 403
    node_view = admin_client.get(reverse("admin:processhub_node_change", args=[a.pk]))
    assert node_view.status_code == 200 and 'name="_save"' not in node_view.content.decode()


def _staff(codenames: list[str]) -> User:
    user = User.objects.create_user("op", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="processhub", codename__in=codenames))
    return user


def test_view_permission_sees_lists_but_gets_no_actions(client, cluster_rows):
    client.force_login(_staff(["view_process", "view_node"]))
    response = client.get(PROCESSES)
    assert response.status_code == 200
    assert response.context["action_form"] is None  # no action is permitted
    assert client.get(OVERVIEW).status_code == 200
    p = Process.objects.filter(status="running").first()
    refused = client.post(PROCESSES, {"action": "stop", "_selected_action": [p.pk], "index": 0})
    p.refresh_from_db()
    assert p.status == "running" and refused.status_code in (200, 302)


def test_operator_permissions_enable_actions_not_editing(client, cluster_rows):
    client.force_login(_staff(["view_process", "view_node", "stop_process", "restart_process", "move_process",
                               "drain_node"]))
    response = client.get(PROCESSES)
    choices = [c[0] for c in response.context["action_form"].fields["action"].choices]
    assert {"stop", "restart", "move"} <= set(choices) and "delete_selected" not in choices
    assert "drain" in [c[0] for c in client.get(NODES).context["action_form"].fields["action"].choices]
    p = Process.objects.first()
    assert client.post(reverse("admin:processhub_process_change", args=[p.pk]), {"epoch": 5}).status_code == 403


def test_no_permission_no_pages(client, cluster_rows):
    client.force_login(_staff([]))
    assert client.get(PROCESSES).status_code == 403
    assert client.get(OVERVIEW).status_code == 403
    client.logout()
    assert client.get(OVERVIEW).status_code == 302  # to the login page


def test_move_without_a_target_changes_nothing(admin_client, cluster_rows):
    p = Process.objects.filter(status="running").first()
    response = admin_client.post(PROCESSES, {"action": "move", "_selected_action": [p.pk], "index": 0,
                                             "to_node": ""}, follow=True)
    assert "Choose a live node" in response.content.decode()
    assert Process.objects.get(pk=p.pk).epoch == p.epoch
