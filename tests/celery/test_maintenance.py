"""Registry maintenance for ``celery beat``: the retention purge, the health report, the wiring (no worker)."""
from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.test import override_settings

from processhub.contrib import celery as hub_celery
from processhub.models import Node, NodeStatus, Process, ProcessStatus

DAY = timedelta(days=1)


def node(name: str, status: str = NodeStatus.UP, lease=None, stopped=None) -> Node:
    return Node.objects.create(id=name, name=name, status=status, heartbeat_at=Now(), started_at=Now() - 30 * DAY,
                               lease_expires_at=lease if lease is not None else Now() + timedelta(seconds=5),
                               stopped_at=stopped, channel=f"x.node.{name}")


def proc(pid: str, status: str = ProcessStatus.RUNNING, owner: Node | None = None, updated=None, started=None):
    return Process.objects.create(label="hubtest.Echo", process_id=pid, status=status, node=owner, epoch=1,
                                  updated_at=updated, started_at=started if started is not None else Now() - 30 * DAY)


def ids(model) -> set[str]:
    field = "process_id" if model is Process else "id"
    return set(model.objects.values_list(field, flat=True))


@pytest.mark.django_db
def test_purge_deletes_only_old_finished_rows_and_old_idle_down_nodes():
    live = node("live")
    old_down = node("old-down", NodeStatus.DOWN, lease=Now() - 9 * DAY, stopped=Now() - 9 * DAY)
    old_down_owner = node("old-down-owner", NodeStatus.DOWN, lease=Now() - 9 * DAY, stopped=Now() - 9 * DAY)
    node("recent-down", NodeStatus.DOWN, lease=Now() - DAY, stopped=Now() - DAY)
    node("expired-never-marked", NodeStatus.UP, lease=Now() - 9 * DAY)  # "up" until a node marks it down
    node("down-no-stop-time", NodeStatus.DOWN, lease=Now() - 9 * DAY)

    proc("old-stopped", ProcessStatus.STOPPED, updated=Now() - 8 * DAY)
    proc("old-failed", ProcessStatus.FAILED, updated=Now() - 8 * DAY)
    proc("old-stopped-no-update", ProcessStatus.STOPPED, started=Now() - 8 * DAY)
    proc("recent-stopped", ProcessStatus.STOPPED, updated=Now() - 6 * DAY)
    proc("old-running", ProcessStatus.RUNNING, owner=live, updated=Now() - 30 * DAY)
    proc("orphan-of-old-down", ProcessStatus.RUNNING, owner=old_down_owner, updated=Now() - 30 * DAY)

    result = hub_celery.purge_finished()  # RETENTION defaults to 7 days
    assert result == {"processes": 3, "nodes": 2, "retention": 7 * 86400.0, "more": False}
    assert ids(Process) == {"recent-stopped", "old-running", "orphan-of-old-down"}
    assert ids(Node) == {"live", "old-down-owner", "recent-down", "expired-never-marked"}
    assert not Node.objects.filter(id=old_down.id).exists()

    with override_settings(PROCESSHUB={"RETENTION": 5 * 86400.0}):
        assert hub_celery.purge_finished()["processes"] == 1
    assert ids(Process) == {"old-running", "orphan-of-old-down"}


@pytest.mark.django_db
def test_purge_works_in_bounded_batches():
    for i in range(5):
        proc(f"s{i}", ProcessStatus.STOPPED, updated=Now() - 2 * DAY)
    assert hub_celery.purge_finished(retention=86400, batch=2, max_batches=2) == {
        "processes": 4, "nodes": 0, "retention": 86400.0, "more": True}
    assert hub_celery.purge_finished(retention=86400, batch=2) == {
        "processes": 1, "nodes": 0, "retention": 86400.0, "more": False}
    assert not Process.objects.exists()


@pytest.mark.django_db
def test_health_report_flags_orphans_nobody_took_over():
    live = node("live")
    node("draining", NodeStatus.DRAINING)
    dead_long = node("dead-long", NodeStatus.DOWN, lease=Now() - timedelta(minutes=5))
    dead_now = node("dead-now", NodeStatus.UP, lease=Now() - timedelta(seconds=1))
    proc("fine", owner=live)
    proc("stopped", ProcessStatus.STOPPED)
    proc("fresh-orphan", owner=dead_now)

    report = hub_celery.registry_health()
    assert report == {"ok": True, "live_nodes": ["live"], "draining_nodes": ["draining"],
                      "processes": {"running": 2, "stopped": 1, "failed": 0, "idle": 0}, "orphans": 1, "stuck": 0,
                      "stuck_examples": []}

    proc("stuck-orphan", owner=dead_long)
    proc("stuck-unowned", updated=Now() - timedelta(minutes=5))
    report = hub_celery.registry_health()
    assert not report["ok"] and report["orphans"] == 3 and report["stuck"] == 2
    assert sorted(report["stuck_examples"]) == [["hubtest.Echo", "stuck-orphan"], ["hubtest.Echo", "stuck-unowned"]]


def test_celery_app_wiring():
    from hubproject.celery import app

    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    for name in (hub_celery.HEALTH_TASK, hub_celery.PURGE_TASK):
        assert name in app.tasks
        assert app.conf.beat_schedule[name]["task"] == name
    assert app.conf.beat_schedule[hub_celery.HEALTH_TASK]["schedule"] == 60.0
    assert app.conf.beat_schedule[hub_celery.PURGE_TASK]["schedule"] == 3600.0
    assert "hubproject.demo.tasks.incr_counter" in app.tasks
    assert hub_celery.HubNode in app.steps["worker"]
    assert [o.name for o in app.user_options["worker"]] == ["hub_node"]


def test_hub_node_step_is_inert_without_the_option():
    step = hub_celery.HubNode(object())
    assert not step.include_if(object()) and step.info(object()) == {}
    step.stop(object())  # no node: nothing to drain, returns at once
    assert hub_celery.HubNode(object(), hub_node="w").include_if(object())
