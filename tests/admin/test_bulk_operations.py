"""Long admin actions run in the background with a progress row (issue 9): the request returns at once."""
import asyncio
import threading

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.urls import reverse

from processhub import admin_actions
from processhub.models import BulkOperation, BulkStatus, Process
from tests.cluster.harness import wait_for
from tests.hubtest.processes import Echo

PROCESSES = reverse("admin:processhub_process_changelist")
COUNT = 30


def progress_url(op: BulkOperation) -> str:
    return reverse("admin:processhub_bulkoperation_change", args=[op.pk])


@pytest.fixture
def gate(monkeypatch):
    """Hold every restart until the test opens the gate, so "returned before the work was done" is certain."""
    opened = threading.Event()
    real = admin_actions._restarter

    def gated(t):
        one = real(t)

        async def held(client, p):
            await asyncio.get_running_loop().run_in_executor(None, opened.wait, 30)
            return await one(client, p)

        return held

    monkeypatch.setattr(admin_actions, "_restarter", gated)
    return opened


def test_restarting_many_processes_returns_at_once_and_reports_progress(embedded, admin_client, admin_user, gate):
    for i in range(COUNT):
        Echo.start(f"bulk{i}")
    before = dict(Process.objects.filter(label=Echo.label).values_list("pk", "epoch"))
    assert len(before) == COUNT

    response = admin_client.post(PROCESSES, {"action": "restart", "_selected_action": list(before), "index": 0})
    # Answered while every restart is still held at the gate: nothing is done yet.
    op = BulkOperation.objects.get()
    assert response.status_code == 302 and response["Location"] == progress_url(op)
    assert (op.kind, op.total, op.status, op.finished, op.created_by) == ("restart", COUNT, BulkStatus.RUNNING, 0,
                                                                          admin_user)
    page = admin_client.get(progress_url(op)).content.decode()
    assert f"0 / {COUNT}" in page and 'http-equiv="refresh"' in page

    gate.set()
    op = wait_for(lambda: (o := BulkOperation.objects.get()).status == BulkStatus.DONE and o, 30, "the restarts")
    assert (op.done, op.skipped, op.failed, op.errors) == (COUNT, 0, 0, "")
    after = dict(Process.objects.filter(label=Echo.label).values_list("pk", "epoch"))
    assert all(after[pk] > epoch for pk, epoch in before.items())
    assert Echo.call("bulk0", {})["n"] == 1  # a fresh activation
    page = admin_client.get(progress_url(op)).content.decode()
    assert f"{COUNT} / {COUNT}" in page and 'http-equiv="refresh"' not in page
    # Logged like the inline actions: one admin log entry per restarted row.
    logged = LogEntry.objects.filter(user=admin_user, action_flag=CHANGE, change_message__startswith="restart: ")
    assert sorted(int(pk) for pk in logged.values_list("object_id", flat=True)) == sorted(before)


def test_a_few_rows_still_run_inline(embedded, admin_client):
    for i in range(3):
        Echo.start(f"few{i}")
    pks = list(Process.objects.filter(label=Echo.label).values_list("pk", flat=True))
    response = admin_client.post(PROCESSES, {"action": "stop", "_selected_action": pks, "index": 0}, follow=True)
    assert "Stop: 3 done" in response.content.decode()
    assert not BulkOperation.objects.exists()


def test_failures_are_counted_and_listed(embedded, admin_user):
    for i in range(COUNT):
        Echo.start(f"gone{i}")
    rows = list(Process.objects.filter(label=Echo.label))
    # The helper the admin calls: a move to a node that is not live fails for every row.
    op = admin_actions.start_bulk("move", rows, admin_user, to_node="no-such-node")
    op = wait_for(lambda: (o := BulkOperation.objects.get(pk=op.pk)).status == BulkStatus.DONE and o, 30, "the moves")
    assert (op.kind, op.target, op.done, op.failed) == ("move", "no-such-node", 0, COUNT)
    assert op.errors.count("NoLiveNodes") == min(COUNT, admin_actions.MAX_ERROR_LINES)
    assert not LogEntry.objects.exists()  # nothing was done, nothing is logged
