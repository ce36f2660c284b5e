"""Admin permissions per action (issue 9): a support role looks, operators act, arguments need a grant of their own."""
import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from processhub import admin_actions
from processhub.models import BulkOperation, Process, ProcessStatus
from tests.admin.rows import make_node, make_processes

pytestmark = pytest.mark.django_db

PROCESSES = reverse("admin:processhub_process_changelist")
NODES = reverse("admin:processhub_node_changelist")
OVERVIEW = reverse("admin:processhub_overview")
VIEW = ["view_process", "view_node"]
SECRET_ARG = "arg-only-for-the-permitted"
SECRET_HANDOFF = "handoff-only-for-the-permitted"


def staff(codenames: list[str], username: str = "support") -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="processhub", codename__in=codenames))
    return user


def action_choices(response) -> set[str]:
    form = response.context["action_form"]
    return set() if form is None else {value for value, _ in form.fields["action"].choices if value}


@pytest.fixture
def rows():
    a, b = make_node("alpha"), make_node("beta")
    make_processes([a, b], 10)
    p = Process.objects.filter(status=ProcessStatus.RUNNING).first()
    Process.objects.filter(pk=p.pk).update(arg={"user": SECRET_ARG}, handoff={"state": SECRET_HANDOFF})
    return a, b, p


@pytest.fixture
def no_hub_calls(monkeypatch):
    """Any action that got through would reach the hub: fail loudly instead."""
    def refuse(*args, **kwargs):
        raise AssertionError("an action ran for a user without its permission")

    for name in ("stop_processes", "restart_processes", "move_processes", "drain_nodes", "start_bulk"):
        monkeypatch.setattr(admin_actions, name, refuse)


def test_view_only_staff_sees_pages_but_cannot_act_or_see_arguments(client, rows, no_hub_calls):
    a, b, p = rows
    client.force_login(staff(VIEW))
    for url in (PROCESSES, NODES, OVERVIEW, reverse("admin:processhub_node_change", args=[a.pk])):
        assert client.get(url).status_code == 200, url
    assert client.get(PROCESSES).context["action_form"] is None
    assert client.get(NODES).context["action_form"] is None
    detail = client.get(reverse("admin:processhub_process_change", args=[p.pk]))
    html = detail.content.decode()
    assert detail.status_code == 200 and p.process_id in html
    assert SECRET_ARG not in html and SECRET_HANDOFF not in html
    assert "start argument" not in html.lower() and "handoff state" not in html.lower()
    # Posting the actions anyway changes nothing (and never reaches the hub: no_hub_calls).
    for action, extra in (("stop", {}), ("restart", {}), ("move", {"to_node": b.pk})):
        client.post(PROCESSES, {"action": action, "_selected_action": [p.pk], "index": 0, **extra})
    client.post(NODES, {"action": "drain", "_selected_action": [a.pk], "index": 0})
    after = Process.objects.get(pk=p.pk)
    assert (after.status, after.epoch, after.node_id) == (p.status, p.epoch, p.node_id)
    # Background operations are for operators.
    op = BulkOperation.objects.create(kind="stop", total=30)
    assert client.get(reverse("admin:processhub_bulkoperation_change", args=[op.pk])).status_code == 403


@pytest.mark.parametrize(
    "codename, process_actions, node_actions",
    [
        ("stop_process", {"stop"}, set()),
        ("restart_process", {"restart"}, set()),
        ("move_process", {"move"}, set()),
        # Undrain and a one-shot rebalance change where processes run as a drain does: one permission.
        ("drain_node", set(), {"drain", "undrain", "rebalance"}),
        ("change_process", set(), set()),  # Django's change permission no longer acts
        ("view_process_arguments", set(), set()),
    ],
)
def test_each_action_needs_its_own_permission(client, rows, codename, process_actions, node_actions):
    client.force_login(staff([*VIEW, codename]))
    assert action_choices(client.get(PROCESSES)) == process_actions
    assert action_choices(client.get(NODES)) == node_actions


def test_a_stop_permission_does_not_allow_a_move(client, rows, monkeypatch):
    _, b, p = rows
    stopped = []
    monkeypatch.setattr(admin_actions, "stop_processes", lambda objs: stopped.extend(objs) or [])
    monkeypatch.setattr(admin_actions, "move_processes", lambda *a, **k: pytest.fail("moved without permission"))
    client.force_login(staff([*VIEW, "stop_process"]))
    client.post(PROCESSES, {"action": "move", "_selected_action": [p.pk], "index": 0, "to_node": b.pk})
    client.post(PROCESSES, {"action": "stop", "_selected_action": [p.pk], "index": 0})
    assert [o.pk for o in stopped] == [p.pk]


def test_arguments_and_handoff_need_their_own_permission(client, rows):
    _, _, p = rows
    client.force_login(staff([*VIEW, "view_process_arguments"]))
    html = client.get(reverse("admin:processhub_process_change", args=[p.pk])).content.decode()
    assert SECRET_ARG in html and SECRET_HANDOFF in html


def test_superuser_sees_arguments_and_every_action(admin_client, rows):
    _, _, p = rows
    html = admin_client.get(reverse("admin:processhub_process_change", args=[p.pk])).content.decode()
    assert SECRET_ARG in html and SECRET_HANDOFF in html
    assert {"stop", "restart", "move"} <= action_choices(admin_client.get(PROCESSES))
    assert action_choices(admin_client.get(NODES)) == {"drain", "undrain", "rebalance"}


def test_operators_follow_background_operations(client, rows):
    op = BulkOperation.objects.create(kind="restart", total=30, done=12)
    client.force_login(staff(["view_process", "restart_process"]))
    page = client.get(reverse("admin:processhub_bulkoperation_change", args=[op.pk]))
    assert page.status_code == 200 and "12 / 30" in page.content.decode()
    assert 'http-equiv="refresh"' in page.content.decode()  # running: the page refreshes itself
    assert client.get(reverse("admin:processhub_bulkoperation_changelist")).status_code == 200
    # Nobody edits or deletes the record.
    assert client.post(reverse("admin:processhub_bulkoperation_delete", args=[op.pk]),
                       {"post": "yes"}).status_code == 403
