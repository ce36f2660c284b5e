"""Fenced writes (DESIGN I4) on the embedded node: refused once the epoch moved on, and a takeover waits for one
in progress. The epoch is moved with the ORM behind the activation's back, as a takeover's claim moves it."""
from __future__ import annotations

import os
import threading

import pytest
from django.db import connection
from django.db.models import F
from django.test import override_settings

from processhub.exceptions import Fenced
from processhub.models import Process
from processhub.runtime import reset_runtime
from tests.hubtest.processes import GATES, AsyncFencedWriter, FencedWriter, Gate

needs_postgres = pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                    reason="row locks need PostgreSQL (DATABASE_URL); scripts/test provides it")


@pytest.fixture
def quiet_node(transactional_db):
    """An embedded node that does not reconcile during the test.

    A reconcile would notice the moved epoch and stop the activation before its
    handler tries to write: here the handler must be the one to find out.
    """
    settings = {"TRANSPORT": "memory", "EMBEDDED": True, "HEARTBEAT_INTERVAL": 0.2, "NODE_TTL": 3.0,
                "LEASE_SAFETY_MARGIN": 0.5, "RECONCILE_INTERVAL": 60.0, "FULL_RESYNC_INTERVAL": 120.0,
                "PREFIX": "fenced-test"}
    with override_settings(PROCESSHUB=settings):
        reset_runtime()
        from processhub.runtime import get_runtime

        yield get_runtime()
        reset_runtime(shutdown=True)
    GATES.clear()


def call_in_background(cls, pid: str, message: dict) -> threading.Thread:
    def go():
        try:
            cls.call(pid, message, timeout=20)
        except Exception:  # noqa: BLE001 - the gate carries the outcome the test judges
            pass

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def bump_epoch(cls, pid: str) -> None:
    Process.objects.filter(label=cls.label, process_id=pid).update(epoch=F("epoch") + 1)


@pytest.mark.parametrize("cls", [FencedWriter, AsyncFencedWriter], ids=["fenced", "run_fenced"])
def test_a_write_after_the_epoch_moved_on_is_refused_and_changes_nothing(quiet_node, cls):
    pid = f"fw-{cls.__name__}"
    cls.call(pid, {"op": "write", "value": {"v": 1}})  # the happy path: it owns its epoch
    row = Process.objects.get(label=cls.label, process_id=pid)
    assert (row.metadata, row.epoch) == ({"v": 1}, 1)
    gate = GATES[pid] = Gate()
    caller = call_in_background(cls, pid, {"op": "gated_write", "value": {"v": 2}})
    assert gate.entered.wait(10), "the handler never started"
    bump_epoch(cls, pid)
    gate.go.set()
    assert gate.done.wait(10), "the handler never finished its write"
    caller.join(10)
    assert isinstance(gate.result, Fenced), gate.result
    assert "epoch 1" in str(gate.result)
    row.refresh_from_db()
    assert (row.metadata, row.epoch) == ({"v": 1}, 2)  # nothing written, the new epoch kept


@needs_postgres
def test_a_takeover_waits_for_a_fenced_write_in_progress(quiet_node):
    pid = "fw-lock"
    FencedWriter.call(pid, {"op": "write", "value": {"v": 1}})
    gate = GATES[pid] = Gate()
    caller = call_in_background(FencedWriter, pid, {"op": "write_inside_gate", "value": {"v": 3}})
    assert gate.entered.wait(10), "the handler never entered fenced()"
    bumped = threading.Event()

    def takeover():
        try:
            bump_epoch(FencedWriter, pid)  # blocks on the row lock fenced() holds
            bumped.set()
        finally:
            connection.close()

    claim = threading.Thread(target=takeover, daemon=True)
    claim.start()
    assert not bumped.wait(0.5), "the epoch moved while a fenced transaction held the row"
    gate.go.set()
    assert gate.done.wait(10) and gate.result == "written"
    assert bumped.wait(10), "the takeover never went through"
    caller.join(10)
    row = Process.objects.get(label=FencedWriter.label, process_id=pid)
    assert (row.metadata, row.epoch) == ({"v": 3}, 2)  # written while it owned epoch 1, then moved on
